"""The thin gRPC layer: node -> **Fusion.Stream** -> core.

Hop before: a camera node's stream (``mvic.v1.Fusion/Stream``, stubs in ``mvic.shared.rpc``).
Hop after: ``core.FusionCore`` (``connect`` / ``receive`` / ``disconnect``), which knows nothing about gRPC.

Per stream: the first message must be a Hello; the core accepts it (Welcome) or raises, and ``status.status_for``
picks the status the stream ends with. Then a reader task feeds ViewPackets to the core while this handler sends the
session's outbox (PacketError, Ack, and finally the close) back. Stream metadata "mvic-camera"/"mvic-group" must
agree with the Hello.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from mvic.fusion_server.core import FusionCore
from mvic.fusion_server.errors import ServerError, StreamError
from mvic.fusion_server.records import AckEvent, IncomingPacket, RejectEvent
from mvic.fusion_server.session import Session
from mvic.fusion_server.status import error_code_for, status_for
from mvic.shared.rpc import mvic_pb2 as pb, mvic_pb2_grpc
from mvic.shared.rpc.hello import Hello

log = logging.getLogger(__name__)


class FusionServicer(mvic_pb2_grpc.FusionServicer):
    def __init__(self, core: FusionCore):
        self._core = core

    async def Stream(self, request_iterator, context: grpc.aio.ServicerContext):  # noqa: N802 (gRPC's name)
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if first.WhichOneof("kind") != "hello":
            await self._abort(context, StreamError("the first message of a stream must be a Hello"))
        try:
            session, welcome = await self._core.connect(Hello.from_proto(first.hello), metadata)
        except ServerError as exc:
            log.warning("refused camera %r: %s", first.hello.camera_id, exc)
            self._core.metrics.refused.labels(status_for(exc).name).inc()
            await self._abort(context, exc)
        yield pb.ServerMessage(welcome=pb.Welcome(
            acked_sequence=welcome.acked_sequence, has_acked=welcome.has_acked,
            max_packet_bytes=welcome.max_packet_bytes, server_version=welcome.server_version))
        reader = asyncio.create_task(self._read(request_iterator, session, context), name=f"mvic-read-{session.camera}")
        try:
            while True:
                event = await session.next_event()
                if isinstance(event, AckEvent):
                    yield pb.ServerMessage(ack=pb.Ack(acked_sequence=event.acked_sequence))
                elif isinstance(event, RejectEvent):
                    err = event.error
                    yield pb.ServerMessage(error=pb.PacketError(
                        sequence=err.sequence, code=error_code_for(err), message=str(err)))
                else:
                    if event.error is not None:
                        await self._abort(context, event.error)
                    return
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await self._core.disconnect(session)

    async def _read(self, request_iterator, session: Session, context) -> None:
        try:
            async for message in request_iterator:
                if message.WhichOneof("kind") != "packet":
                    session.close("protocol error", StreamError("only ViewPackets may follow the Hello"))
                    return
                p = message.packet
                await self._core.receive(session, IncomingPacket(
                    p.sequence, p.capture_ns, p.sent_ns, p.bitstream, time.time_ns()))
            await self._core.end_of_input(session)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if session.closed or context.done():  # the stream already ended (abort, shutdown, client gone)
                return
            if isinstance(exc, grpc.aio.AioRpcError):
                log.info("stream of camera %s ended: %s", session.camera, exc.code())
                session.close("stream broken")
                return
            log.exception("stream of camera %s failed", session.camera)  # a bug ends this stream, not the server
            session.close("internal error", ServerError(f"internal server error: {exc}"))

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
        await context.abort(status_for(exc), str(exc))
