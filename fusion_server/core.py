"""The fusion server's core, without gRPC: **receive** -> group -> joint decode -> sink -> ack.

Hop before: the servicer (``servicer.FusionServicer``) turns a stream's Hello and ViewPackets into
``mvic.shared.rpc.hello.Hello`` / ``IncomingPacket`` and calls ``connect`` / ``receive``.
Hop after: events in each camera's ``session.Session`` outbox, which the servicer sends back as Welcome/Ack/PacketError.

Inside, in order: ``receive`` checks a packet (size, duplicate, bitstream, model) and admits it to the camera group's
``grouper.Grouper``; ready groups take one of ``max_inflight_groups`` slots (streams wait when all are taken: the
explicit backpressure policy, nodes spool meanwhile) and are decoded by ``decoder.DecodePipeline`` (entropy decoding
on CPU workers, then batched synthesis on the device); one sink task takes the results in emission order, writes
them (``sinks.FrameSinks``, own thread), records them in the ack journal (``acks.AckJournal``) and only then pushes
the cumulative Ack. Everything except the pools runs on one asyncio loop, so the grouper and trackers need no locks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from mvic.fusion_server.acks import AckJournal, AckTracker
from mvic.fusion_server.config import ServerConfig
from mvic.fusion_server.decoder import DecodePipeline, GroupDecoder
from mvic.fusion_server.errors import (
    BadHelloError,
    DecodeFailedError,
    IncompatibleNodeError,
    MalformedPacketError,
    NotReadyError,
    OutOfOrderError,
    PacketRejected,
    PacketTooLargeError,
    StreamReplacedError,
    TooManyCamerasError,
    UnknownCameraError,
)
from mvic.fusion_server.grouper import DuplicateViewError, Grouper
from mvic.fusion_server.live import LiveView
from mvic.fusion_server.metrics import ServerMetrics
from mvic.fusion_server.records import GroupResult, IncomingPacket, ReceivedView, ViewGroup, Welcome
from mvic.fusion_server.session import Session
from mvic.fusion_server.sinks import FrameSinks
from mvic.shared.bitstream import unpack
from mvic.shared.errors import BitstreamError, HelloError
from mvic.shared.model_table import MODELS_BY_ID
from mvic.shared.rpc.hello import Hello

log = logging.getLogger(__name__)


class FusionCore:
    def __init__(self, config: ServerConfig, metrics: ServerMetrics, live: LiveView, *, server_version: str):
        self.config = config
        self.metrics = metrics
        self.live = live
        self.server_version = server_version
        self.journal = AckJournal(config.out)
        self.sinks = FrameSinks(config.out, png=config.sinks.png, png_name=config.sinks.png_name,
                                video=config.sinks.video, video_fps=config.sinks.video_fps)
        self._decoder: GroupDecoder | None = None
        self._pipeline: DecodePipeline | None = None
        self._sessions: dict[str, Session] = {}
        self._trackers: dict[str, AckTracker] = {}
        self._durable: dict[str, int] = {}  # acked sequence per camera as last written to the journal
        self._groupers: dict[str, Grouper] = {}
        self._slots = asyncio.Semaphore(config.decode.max_inflight_groups)
        self._queue: asyncio.Queue[tuple[ViewGroup, asyncio.Future[GroupResult]]] = asyncio.Queue()
        self._journal_lock = asyncio.Lock()
        self._io_pool = ThreadPoolExecutor(1, thread_name_prefix="mvic-sink")  # one writer: sinks are not shared
        self._tasks: list[asyncio.Task] = []
        self._accepting = True

    # ----------------------------------------------------------------------------------------- life cycle
    async def start(self) -> None:
        """Read the journal and start the sink and timeout tasks (the model may still be loading)."""
        self._durable = self.journal.load()
        for camera, acked in self._durable.items():
            self._trackers[camera] = AckTracker(acked)
        if self._trackers:
            log.info("ack journal %s: resuming %d camera(s)", self.journal.path, len(self._trackers))
        self._tasks = [asyncio.create_task(self._sink_loop(), name="mvic-sink"),
                       asyncio.create_task(self._expire_loop(), name="mvic-expire")]

    def attach_decoder(self, decoder: GroupDecoder, on_device_fault: Callable[[str], None] | None = None) -> None:
        """Streams are taken from now on; cameras of the journal are awaited for away_wait_ms (they reconnect).
        ``on_device_fault(reason)`` is called on the event loop when synthesis leaves the GPU for the CPU."""
        self._decoder = decoder
        d = self.config.decode
        self._pipeline = DecodePipeline(decoder, self.metrics, workers=d.workers, max_batch=d.max_batch,
                                        on_device_fault=on_device_fault)
        self._pipeline.start()
        now = time.monotonic()
        for camera in self._durable:
            self._grouper(self.journal.group_of(camera) or "").set_away(camera, now)

    @property
    def ready(self) -> bool:
        return self._decoder is not None and self._accepting

    async def drain(self, timeout_s: float) -> bool:
        """Stop taking packets, decode every open group, write and ack all in flight; False on timeout."""
        self._accepting = False
        now = time.monotonic()
        for grouper in self._groupers.values():
            await self._dispatch(grouper.flush(now))
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
            drained = True
        except TimeoutError:
            log.warning("drain: groups still in flight after %.1f s; their frames are not acked and will be resent",
                        timeout_s)
            drained = False
        for session in list(self._sessions.values()):
            session.close("server shutting down; reconnect to resume",
                          NotReadyError("the server is shutting down; reconnect with backoff to resume"))
        return drained

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pipeline is not None:
            await self._pipeline.stop()
        await asyncio.get_running_loop().run_in_executor(self._io_pool, self.sinks.close)
        self._io_pool.shutdown(wait=True)

    # ------------------------------------------------------------------------------------------ handshake
    async def connect(self, hello: Hello, metadata: Mapping[str, str] | None = None) -> tuple[Session, Welcome]:
        """Accept a camera's stream or raise a HandshakeError / NotReadyError saying what to do. ``metadata``: the
        stream headers, lower-case keys (``mvic-camera`` / ``mvic-group`` must agree with the Hello)."""
        if not self._accepting:
            raise NotReadyError("the server is shutting down; reconnect with backoff")
        if self._decoder is None:
            raise NotReadyError("the server is still loading its model; retry in a few seconds")
        self._check_hello(hello, metadata)
        camera = hello.camera_id
        if camera not in self._trackers and len(self._trackers) >= self.config.max_cameras:
            raise TooManyCamerasError(
                f"the server already serves {len(self._trackers)} cameras (max_cameras); raise max_cameras in "
                "server.yaml or run another server"
            )
        self._trackers.setdefault(camera, AckTracker(self._durable.get(camera, 0)))
        old = self._sessions.get(camera)
        if old is not None:
            old.close("replaced by a newer stream of the same camera",
                      StreamReplacedError(f"camera {camera} opened a newer stream; this one ends"))
        session = Session(hello)
        self._sessions[camera] = session
        grouper = self._grouper(hello.group_id)
        await self._dispatch(grouper.set_expected(self._connected(hello.group_id), time.monotonic()))
        self.metrics.connected.set(len(self._sessions))
        self.live.set_connected(camera, hello.group_id, True)
        acked = self._durable.get(camera, 0)
        log.info("camera %s (group %r, node %s) connected; resume after sequence %d", camera, hello.group_id,
                 hello.node_version or "?", acked)
        return session, Welcome(acked, camera in self._durable, self.config.max_packet_bytes, self.server_version)

    async def disconnect(self, session: Session) -> None:
        if self._sessions.get(session.camera) is not session:
            return  # already replaced by a newer stream
        del self._sessions[session.camera]
        self.metrics.connected.set(len(self._sessions))
        self.live.set_connected(session.camera, session.group, False)
        log.info("camera %s disconnected", session.camera)
        grouper = self._groupers.get(session.group)
        if grouper is not None and self._accepting:
            now = time.monotonic()
            if not session.input_done:  # a broken stream, not a node that stopped: expect it back soon
                grouper.set_away(session.camera, now)  # before set_expected, so its groups keep waiting
            await self._dispatch(grouper.set_expected(self._connected(session.group), now))

    async def end_of_input(self, session: Session) -> None:
        """The node half-closed: end the stream once its frames in flight are acked."""
        session.input_done = True
        self._close_if_done(session)

    def _check_hello(self, hello: Hello, metadata: Mapping[str, str] | None) -> None:
        try:
            hello.check(metadata)
        except HelloError as exc:
            raise BadHelloError(str(exc)) from exc
        cam = hello.camera_id
        if self.config.cameras and cam not in self.config.cameras:
            raise UnknownCameraError(
                f"camera {cam!r} is not in this server's camera list ({', '.join(self.config.cameras)}); "
                "add it to cameras in server.yaml or fix the node's --camera"
            )
        dec = self._decoder
        if hello.format_version != dec.format_version:
            side = "the server" if hello.format_version > dec.format_version else "the node"
            raise IncompatibleNodeError(
                f"camera {cam} writes bitstream format version {hello.format_version}, this server reads version "
                f"{dec.format_version}; upgrade MVIC on {side}"
            )
        if hello.model_id != dec.model_id:
            other = MODELS_BY_ID.get(hello.model_id)
            theirs = other.name if other else f"unknown model id {hello.model_id:#06x} (upgrade MVIC on the server)"
            raise IncompatibleNodeError(
                f"camera {cam} codes with {theirs}, this server decodes {dec.model_name}; start the node with "
                f"--model {dec.model_name} and the server's weights (sha256 prefix {dec.weights_hash.hex()})"
            )
        if hello.weights_hash != dec.weights_hash:
            raise IncompatibleNodeError(
                f"camera {cam} codes with {dec.model_name} weights {hello.weights_hash.hex()}, this server holds "
                f"weights {dec.weights_hash.hex()}; install the same weights file on the node and the server"
            )

    # -------------------------------------------------------------------------------------------- receive
    async def receive(self, session: Session, packet: IncomingPacket) -> None:
        """Check one packet and admit it to its group; a packet that fails a check is rejected alone."""
        if not self._accepting or session.closed:
            return  # not admitted and not acked: the node sends it again after reconnecting
        camera, seq = session.camera, packet.sequence
        self.metrics.packets.labels(camera).inc()
        self.metrics.packet_bytes.labels(camera).inc(len(packet.bitstream))
        tracker = self._trackers[camera]
        if seq != 0 and (seq <= tracker.acked or tracker.is_in_flight(seq)):
            self.metrics.duplicates.labels(camera).inc()
            self.live.record_duplicate(camera, session.group)
            if seq <= self._durable.get(camera, 0):
                session.push_ack(self._durable[camera])  # stored before: acknowledge again, never decode twice
            return
        try:
            view = self._check_packet(session, packet, tracker)
        except PacketRejected as err:
            await self._finish([(camera, session.group, seq, err)])
            return
        tracker.admit(seq)
        received = ReceivedView(camera, session.group, seq, view.header.capture_ns, packet.received_ns,
                                len(packet.bitstream), view)
        try:
            groups = self._groupers[session.group].add(received, time.monotonic())
        except DuplicateViewError as exc:
            await self._finish([(camera, session.group, seq, OutOfOrderError(seq, str(exc)))])
            return
        await self._dispatch(groups)

    def _check_packet(self, session: Session, packet: IncomingPacket, tracker: AckTracker):
        seq, limit = packet.sequence, self.config.max_packet_bytes
        if seq == 0:
            raise MalformedPacketError(seq, "ViewPacket.sequence must start at 1")
        if seq <= tracker.high_water:
            raise OutOfOrderError(seq, f"sequence {seq} is not above {tracker.high_water}, the last one seen; "
                                       "sequences must increase")
        if len(packet.bitstream) > limit:
            raise PacketTooLargeError(seq, f"bitstream of {len(packet.bitstream)} bytes exceeds this server's "
                                           f"max_packet_bytes ({limit}); lower the resolution or the rate")
        try:
            view = unpack(packet.bitstream)
        except BitstreamError as exc:
            raise MalformedPacketError(seq, f"packet {session.camera}#{seq}: {exc}") from None
        h = view.header
        for what, got, want in (("camera id", h.camera_id, session.camera), ("sequence", h.sequence, seq),
                                ("capture time", h.capture_ns, packet.capture_ns)):
            if got != want:
                raise MalformedPacketError(seq, f"packet {session.camera}#{seq}: bitstream header {what} {got!r} "
                                                f"disagrees with the stream ({want!r})")
        self._decoder.check_header(h)
        return view

    # ---------------------------------------------------------------------------------- group -> decode
    async def _dispatch(self, groups: list[ViewGroup]) -> None:
        for group in groups:
            await self._slots.acquire()  # backpressure: the calling stream waits for a free slot
            self.metrics.group_wait.observe(max(0.0, time.monotonic() - group.opened_s))
            future = self._pipeline.submit(group)
            self._queue.put_nowait((group, future))
            self.metrics.inflight_groups.inc()

    async def _expire_loop(self) -> None:
        while True:
            deadlines = [d for g in self._groupers.values() if (d := g.next_deadline()) is not None]
            wait = min(deadlines) - time.monotonic() if deadlines else 0.1
            await asyncio.sleep(min(max(wait, 0.002), 0.1))
            now = time.monotonic()
            for group_id, grouper in list(self._groupers.items()):
                await self._dispatch(grouper.expire(now))
                if not grouper.open_groups and not grouper.awaiting and not self._connected(group_id):
                    del self._groupers[group_id]  # camera groups come and go: keep only live ones
            self.metrics.open_groups.set(sum(g.open_groups for g in self._groupers.values()))

    # ------------------------------------------------------------------------------------ sink -> ack
    async def _sink_loop(self) -> None:
        while True:
            group, future = await self._queue.get()
            try:
                await self._complete(group, future)
            except Exception:  # a bug here must not stop the server; the frames stay unacked and are resent
                log.exception("sink stage failed for group %s", group.cameras)
            finally:
                self._slots.release()
                self.metrics.inflight_groups.dec()
                self._queue.task_done()

    async def _complete(self, group: ViewGroup, future: asyncio.Future[GroupResult]) -> None:
        try:
            result = await future
        except Exception as exc:
            log.exception("decoding group %s failed", group.cameras)
            result = GroupResult(group, (), tuple((v, DecodeFailedError(v.sequence, f"decoder error: {exc}"))
                                                  for v in group.views), 0.0)
        self.metrics.groups.labels("complete" if group.complete else "partial").inc()
        self.metrics.group_views.observe(len(group.views))
        start = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(self._io_pool, self._write, result)
        except OSError as exc:
            self.metrics.sink_errors.inc()
            log.error("cannot write reconstructions of %s (%s); they stay unacked and the nodes keep them",
                      group.cameras, exc)
            return
        self.metrics.write_seconds.observe(time.perf_counter() - start)
        items = [(f.source.camera_id, f.source.group_id, f.source.sequence, None) for f in result.frames]
        items += [(v.camera_id, v.group_id, v.sequence, err) for v, err in result.failed]
        await self._finish(items)
        now_ns = time.time_ns()
        for frame in result.frames:
            src = frame.source
            self.metrics.frames_written.labels(src.camera_id).inc()
            self.metrics.pixels.labels(src.camera_id).inc(frame.image.shape[0] * frame.image.shape[1])
            self.metrics.ack_latency.labels(src.camera_id).observe(max(0.0, (now_ns - src.received_ns) / 1e9))
            self.metrics.capture_latency.labels(src.camera_id).observe(max(0.0, (now_ns - src.capture_ns) / 1e9))

    def _write(self, result: GroupResult) -> None:
        self.sinks.write(result.frames)
        self.live.record_frames(result.frames, time.time_ns())

    async def _finish(self, items: list[tuple[str, str, int, PacketRejected | None]]) -> None:
        """Sequences written or rejected for good: journal the new cumulative acks, then send them."""
        moved: dict[str, int] = {}
        groups = {camera: group for camera, group, _, _ in items}
        for camera, group, seq, err in items:
            if err is not None:
                self.metrics.rejected.labels(camera, err.reason).inc()
                self.live.record_rejected(camera, group)
                log.warning("rejected %s#%d (%s): %s", camera, seq, err.reason, err)
                if (session := self._sessions.get(camera)) is not None:
                    session.push_reject(err)
            if self._trackers[camera].finish(seq):
                moved[camera] = self._trackers[camera].acked
        if moved:
            async with self._journal_lock:
                await asyncio.get_running_loop().run_in_executor(self._io_pool, self.journal.save, moved, groups)
                for camera, acked in moved.items():
                    self._durable[camera] = max(acked, self._durable.get(camera, 0))
        for camera, acked in moved.items():
            self.metrics.acked_sequence.labels(camera).set(acked)
            if (session := self._sessions.get(camera)) is not None:
                self.live.record_ack(camera, session.group, acked)
                session.push_ack(acked)
                self._close_if_done(session)

    def _close_if_done(self, session: Session) -> None:
        if session.input_done and self._trackers[session.camera].in_flight == 0:
            session.close("the node ended its stream and every frame is acknowledged")

    def _grouper(self, group_id: str) -> Grouper:
        grouper = self._groupers.get(group_id)
        if grouper is None:
            g = self.config.grouping
            grouper = self._groupers[group_id] = Grouper(group_id, int(g.tolerance_ms * 1e6), g.max_wait_ms / 1e3,
                                                         g.max_open_groups, g.away_wait_ms / 1e3)
        return grouper

    def _connected(self, group_id: str) -> frozenset[str]:
        return frozenset(c for c, s in self._sessions.items() if s.group == group_id)
