"""The thin gRPC layer: node -> **Fusion.Stream** -> core.

Hop before: a camera node's stream (``mvic.v1.Fusion/Stream``, stubs in ``mvic.shared.rpc``).
Hop after: ``core.FusionCore`` (``connect`` / ``receive`` / ``disconnect``), which knows nothing about gRPC.

Per stream: its peer address takes one of ``admission.max_streams_per_peer`` places (``admission.PeerStreams``); the
first message must be a Hello, within ``admission.hello_timeout_s``; the core accepts it (Welcome) or raises, and
``status.status_for`` picks the status the stream ends with (``status.trailers_for`` its trailing metadata: in a
cluster, the owner of the camera group). Then a reader task feeds ViewPackets to the core while
this handler sends the session's outbox (PacketError, Ack, and finally the close) back. Stream metadata
"mvic-camera"/"mvic-group" must agree with the Hello. With mutual TLS the verified client certificate
(``x509_pem_cert`` of the auth context) goes to the core with the address (``peer.peer_from``), which checks that it
proves the Hello's camera; refusals are logged with the certificate's subject.

``add_to_server`` registers the handler with ``decode_node_message`` as its request deserializer, so that bytes that
are not a ``mvic.v1.NodeMessage`` (a string field that is not UTF-8, a corrupt wire format) end the stream with
INVALID_ARGUMENT like any other protocol error, instead of failing inside gRPC. Client-supplied text reaches the log
only through ``mvic.shared.ids.display`` (escaped, bounded).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from mvic.fusion_server.admission import PeerStreams, peer_address
from mvic.fusion_server.core import FusionCore
from mvic.fusion_server.errors import NotOwnerError, ServerError, StreamError, StreamTimeoutError
from mvic.fusion_server.peer import Peer, peer_from
from mvic.fusion_server.records import AckEvent, IncomingPacket, RejectEvent
from mvic.fusion_server.session import Session
from mvic.fusion_server.status import error_code_for, status_for, trailers_for
from mvic.shared.ids import display
from mvic.shared.rpc import SERVICE_NAME, mvic_pb2 as pb, mvic_pb2_grpc
from mvic.shared.rpc.hello import Hello

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MalformedMessage:
    """Bytes on the stream that do not parse as a ``mvic.v1.NodeMessage``."""

    reason: str  # protobuf's words, e.g. "String field had bad UTF-8"


def decode_node_message(raw: bytes) -> pb.NodeMessage | MalformedMessage:
    """The Stream method's request deserializer: a NodeMessage, or a MalformedMessage instead of an exception."""
    try:
        return pb.NodeMessage.FromString(raw)
    except DecodeError as exc:
        return MalformedMessage(str(exc).rpartition(": ")[2] or "wire format was corrupt")


def add_to_server(servicer: FusionServicer, server: grpc.aio.Server) -> None:
    """Register Fusion.Stream on ``server`` (in place of ``mvic_pb2_grpc.add_FusionServicer_to_server``, whose
    deserializer raises on malformed bytes: UNKNOWN or INTERNAL and a traceback)."""
    handlers = {"Stream": grpc.stream_stream_rpc_method_handler(
        servicer.Stream, request_deserializer=decode_node_message,
        response_serializer=pb.ServerMessage.SerializeToString)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class FusionServicer(mvic_pb2_grpc.FusionServicer):
    def __init__(self, core: FusionCore):
        self._core = core
        self._peers = PeerStreams(core.config.admission.max_streams_per_peer)

    async def Stream(self, request_iterator, context: grpc.aio.ServicerContext):  # noqa: N802 (gRPC's name)
        peer = peer_from(peer_address(context.peer() or ""), context.auth_context())
        try:
            self._peers.open(peer.address)
        except ServerError as exc:
            await self._refuse(context, exc, peer, "")
        served = self._serve(request_iterator, context, peer)
        try:
            async for message in served:
                yield message
        finally:
            await served.aclose()  # its own cleanup (reader, disconnect) first, even when gRPC stops iterating early
            self._peers.close(peer.address)

    async def _serve(self, request_iterator, context: grpc.aio.ServicerContext, peer: Peer):
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        first = None
        try:
            first = await self._first_message(request_iterator)
            if first is None:
                return
            if isinstance(first, MalformedMessage):
                raise StreamError(f"the first message is not a mvic.v1.NodeMessage ({first.reason}); this is not an "
                                  "MVIC node, or one of another protocol version")
            if first.WhichOneof("kind") != "hello":
                raise StreamError("the first message of a stream must be a Hello")
            session, welcome = await self._core.connect(Hello.from_proto(first.hello), metadata, peer)
        except ServerError as exc:
            camera = first.hello.camera_id if isinstance(first, pb.NodeMessage) else ""
            await self._refuse(context, exc, peer, camera)
        yield pb.ServerMessage(welcome=welcome.to_proto())
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

    async def _first_message(self, request_iterator) -> pb.NodeMessage | MalformedMessage | None:
        """The stream's first message, None when the client closed without one; StreamTimeoutError when none came
        within admission.hello_timeout_s."""
        timeout_s = self._core.config.admission.hello_timeout_s
        read = asyncio.ensure_future(anext(aiter(request_iterator)))
        try:
            done, _ = await asyncio.wait({read}, timeout=timeout_s)
        finally:
            if not read.done():
                read.cancel()
        if not done:
            raise StreamTimeoutError(f"no Hello within {timeout_s:g} s of the stream's start "
                                     "(admission.hello_timeout_s); send the Hello first, at once")
        try:
            return read.result()
        except StopAsyncIteration:
            return None

    async def _read(self, request_iterator, session: Session, context) -> None:
        try:
            async for message in request_iterator:
                if isinstance(message, MalformedMessage):
                    self._protocol_error(session, f"a message that is not a mvic.v1.NodeMessage ({message.reason}); "
                                                  "the stream ends, reconnect and resend")
                    return
                if message.WhichOneof("kind") != "packet":
                    self._protocol_error(session, "only ViewPackets may follow the Hello")
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
    def _protocol_error(session: Session, message: str) -> None:
        log.warning("stream of camera %s breaks the protocol: %s", session.camera, message)
        session.close("protocol error", StreamError(message))

    async def _refuse(self, context: grpc.aio.ServicerContext, exc: ServerError, peer: Peer, camera: str) -> None:
        """End a stream before its Welcome: a counter, one bounded log line, the status."""
        level = logging.INFO if isinstance(exc, NotOwnerError) else logging.WARNING  # routine while groups move
        log.log(level, "refused a stream from %s (camera %s): %s", peer.describe(), display(camera), exc)
        self._core.metrics.refused.labels(status_for(exc).name).inc()
        await self._abort(context, exc)

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
        await context.abort(status_for(exc), str(exc), trailing_metadata=trailers_for(exc))
