"""The fusion server's core, without gRPC: **receive** -> group -> joint decode -> sink -> ack.

Hop before: the servicer (``servicer.FusionServicer``) turns a stream's Hello and ViewPackets into
``mvic.shared.rpc.hello.Hello`` / ``IncomingPacket`` and calls ``connect`` / ``receive``.
Hop after: events in each camera's ``session.Session`` outbox, which the servicer sends back as Welcome/Ack/PacketError.

A data plane a frame enters once and leaves once:

* where: in a cluster (``cluster.Membership``) ``connect`` takes only the camera groups this server owns
  (``errors.NotOwnerError`` names the owner) and ``rehome`` ends the streams of groups that moved elsewhere.
* who: ``connect`` takes a stream only when its peer may be the camera its Hello names (``peer``: with mutual TLS
  the client certificate must prove camera and group and not be revoked, and a revoked camera is cut off at its next
  message; without TLS a camera's open stream is replaced only from the same client address).
* enters: ``receive`` asks the ack book (``acks.AckBook.classify``) what the sequence number is (a resend of a
  stored or pending frame is dropped there, never decoded twice), checks the packet (size, capture time within the
  window of ``admission.check_capture_time``, bitstream, header, model), and only then admits it to the book and to
  its camera group's ``grouper.Grouper``. A packet that fails a check is refused alone: a counter, a log line and a
  PacketError, no other trace. A camera whose streams keep breaking without a frame stored stops holding its group
  (``admission.DropCounts``); a stream silent for ``admission.idle_timeout_s`` is ended.
  The checks bound what a view may cost: at most ``limits.max_view_pixels``, and a stream no shorter than any real
  stream of its size (``decoder.GroupDecoder.check_stream``), so a few bytes cannot declare a huge image.
* ready view sets are cut into the parts decoded on their own (``decoder.decode_units``: one per padded size, at
  most ``limits.max_set_pixels`` each); each part takes one of ``max_inflight_groups`` slots (streams wait when all
  are taken: the explicit backpressure policy, nodes spool meanwhile) and is decoded by ``decoder.DecodePipeline``
  (entropy decoding on CPU workers, then batched synthesis on the device, both in fair order across cameras).
* leaves: one sink task takes the parts as they are decoded, each camera's in emission order (a part waits only for
  earlier parts that share a camera with it, so one camera's slow decodes do not hold back another's acks); each
  view leaves as rejected (decode failed: a PacketError), stored (written by ``sinks.FrameSinks`` on its own thread,
  then journalled and acknowledged by the ack book) or released (the write failed: the camera's stream ends with
  UNAVAILABLE so that its node resends it).

Everything except the pools runs on one asyncio loop, so the grouper and the ack book need no locks. Time comes from
the injected ``clock`` (monotonic seconds, for the grouper's waits) and ``wall_ns`` (the Unix epoch, for latencies).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from mvic.fusion_server.acks import AckBook, Admission
from mvic.fusion_server.admission import DropCounts, check_capture_time
from mvic.fusion_server.cluster import Membership
from mvic.fusion_server.config import ServerConfig
from mvic.fusion_server.decoder import DecodePipeline, GroupDecoder, decode_units
from mvic.fusion_server.errors import (
    BadHelloError,
    ConfigError,
    DecodeFailedError,
    IncompatibleNodeError,
    MalformedPacketError,
    NotOwnerError,
    NotReadyError,
    OutOfOrderError,
    PacketRejected,
    PacketTooLargeError,
    RevokedError,
    StorageError,
    StreamReplacedError,
    StreamTimeoutError,
    TooManyCamerasError,
    UnknownCameraError,
    ViewTooLargeError,
)
from mvic.fusion_server.grouper import Grouper
from mvic.fusion_server.live import LiveView
from mvic.fusion_server.metrics import ServerMetrics
from mvic.fusion_server.peer import NO_PEER, Peer, Revocations, check_identity, may_replace
from mvic.fusion_server.records import (
    DecodeResult,
    FailedView,
    IncomingPacket,
    ReceivedView,
    ViewSet,
)
from mvic.fusion_server.session import Session
from mvic.fusion_server.tokens import CameraTokens
from mvic.fusion_server.sinks import FrameSinks
from mvic.shared.bitstream import ViewBitstream, unpack
from mvic.shared.errors import BitstreamError, HelloError
from mvic.shared.ids import display
from mvic.shared.rpc.hello import Hello, Welcome

log = logging.getLogger(__name__)


class FusionCore:
    def __init__(self, config: ServerConfig, metrics: ServerMetrics, live: LiveView, *, server_version: str,
                 clock: Callable[[], float] = time.monotonic, wall_ns: Callable[[], int] = time.time_ns,
                 sinks: FrameSinks | None = None, membership: Membership | None = None):
        self.config = config
        self.membership = membership  # None: one server, which owns every camera group
        self.metrics = metrics
        self.live = live
        self.server_version = server_version
        self.acks = AckBook(config.journal_dir, config.max_cameras)
        self.sinks = sinks or FrameSinks(config.out, png=config.sinks.png, png_name=config.sinks.png_name,
                                         video=config.sinks.video, video_fps=config.sinks.video_fps)
        self._clock = clock
        self._wall_ns = wall_ns
        self._decoder: GroupDecoder | None = None
        self._pipeline: DecodePipeline | None = None
        self._sessions: dict[str, Session] = {}
        self._groupers: dict[str, Grouper] = {}
        self._drops = DropCounts(config.grouping.max_drops)  # cameras whose broken streams no longer hold groups
        self._slots = asyncio.Semaphore(config.decode.max_inflight_groups)
        self._submitting: set[asyncio.Task] = set()  # _dispatch's submissions, kept until done
        self._queue: asyncio.Queue[tuple[ViewSet, asyncio.Future[DecodeResult]]] = asyncio.Queue()
        self._sink_wakeup = asyncio.Event()  # a part was dispatched or decoded
        self._io_pool = ThreadPoolExecutor(1, thread_name_prefix="mvic-sink")  # one writer: sinks are not shared
        self._tasks: list[asyncio.Task] = []
        self._accepting = True
        self._revocations = Revocations(config.tls.revoked, config.tls.reload_s)
        try:
            self._tokens = CameraTokens(config.tls.tokens, config.tls.reload_s)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"tls.tokens: {config.tls.tokens}: {getattr(exc, 'strerror', None) or exc}; fix the "
                              "file (lines '<camera> sha256:<hex>', made by mvic-certs token)") from None

    # ----------------------------------------------------------------------------------------- life cycle
    async def start(self) -> None:
        """Read the ack journal (AckJournalError when it is damaged) and start the sink and timeout tasks (the
        model may still be loading)."""
        if resumed := self.acks.load():
            log.info("ack journal %s: resuming %d camera(s)", self.acks.path, resumed)
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
        now = self._clock()
        for camera, group in self.acks.journalled().items():
            self._grouper(group).set_away(camera, now)

    @property
    def ready(self) -> bool:
        return self._decoder is not None and self._accepting

    async def drain(self, timeout_s: float) -> bool:
        """Stop taking packets, decode every open view set, write and ack all in flight; False on timeout."""
        self._accepting = False
        now = self._clock()
        for grouper in list(self._groupers.values()):
            await self._dispatch(grouper.flush(now))
        try:
            await asyncio.wait_for(self.wait_idle(), timeout_s)
            drained = True
        except TimeoutError:
            log.warning("drain: view sets still in flight after %.1f s; their frames are not acked and will be "
                        "resent", timeout_s)
            drained = False
        for session in list(self._sessions.values()):
            session.close("server shutting down; reconnect to resume",
                          NotReadyError("the server is shutting down; reconnect with backoff to resume"))
        return drained

    async def wait_idle(self) -> None:
        """Until every view set sent to the decoder has left the core (its views stored, rejected or released)."""
        await self._queue.join()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pipeline is not None:
            await self._pipeline.stop()
        await asyncio.get_running_loop().run_in_executor(self._io_pool, self.sinks.close)
        self._io_pool.shutdown(wait=True)

    # ------------------------------------------------------------------------------------------ handshake
    async def connect(self, hello: Hello, metadata: Mapping[str, str] | None = None,
                      peer: Peer = NO_PEER) -> tuple[Session, Welcome]:
        """Accept a camera's stream or raise a HandshakeError / NotReadyError saying what to do. ``metadata``: the
        stream headers, lower-case keys (``mvic-camera`` / ``mvic-group`` must agree with the Hello). ``peer``: the
        client's address and, with mutual TLS, its certificate, which must prove the Hello's camera and group and
        not be revoked; a camera's open stream is replaced only as ``peer.may_replace`` allows."""
        if not self._accepting:
            raise NotReadyError("the server is shutting down; reconnect with backoff")
        if self._decoder is None:
            raise NotReadyError("the server is still loading its model; retry in a few seconds")
        self._check_hello(hello, metadata)
        camera = hello.camera_id
        if self.config.tls.enabled:
            check_identity(peer, camera, hello.group_id, self.config.tls.trust_domain)
        self._tokens.check(camera, metadata)
        self._revocations.check(peer, camera)
        if not self.acks.has_room(camera):
            raise TooManyCamerasError(
                f"the server already holds frames of {self.acks.slots_taken} cameras (max_cameras); raise "
                "max_cameras in server.yaml or run another server"
            )
        old = self._sessions.get(camera)
        may_replace(old.peer if old is not None else None, peer, camera)
        if old is not None:
            old.close("replaced by a newer stream of the same camera",
                      StreamReplacedError(f"camera {camera} opened a newer stream; this one ends"))
        session = Session(hello, peer)
        session.last_message_s = self._clock()
        self._sessions[camera] = session
        grouper = self._grouper(hello.group_id)
        await self._dispatch(grouper.set_expected(self._expected(hello.group_id), self._clock()))
        self.metrics.connected.set(len(self._sessions))
        if self.acks.holds_slot(camera):
            self.live.set_connected(camera, hello.group_id, True)
        acked = self.acks.acked(camera)
        log.info("camera %s (group %s, node %s) connected; resume after sequence %d", camera,
                 display(hello.group_id), display(hello.node_version), acked)
        return session, Welcome(acked, acked > 0, self.config.max_packet_bytes, self.server_version)

    async def disconnect(self, session: Session) -> None:
        if self._sessions.get(session.camera) is not session:
            return  # already replaced by a newer stream
        del self._sessions[session.camera]
        self.metrics.connected.set(len(self._sessions))
        if self.acks.holds_slot(session.camera):
            self.live.set_connected(session.camera, session.group, False)
        log.info("camera %s disconnected", session.camera)
        grouper = self._groupers.get(session.group)
        if grouper is not None and self._accepting:
            now = self._clock()
            moved = isinstance(session.close_error, NotOwnerError)  # sent to its group's new owner: not awaited
            if not session.input_done and not moved:  # a broken stream, not a node that stopped
                if not isinstance(session.close_error, NotReadyError):  # the server's own fault (storage) is no drop
                    self._drops.dropped(session.camera)
                if self.acks.holds_slot(session.camera) and not self._drops.excluded(session.camera):
                    # a camera that delivers frames: expect it back soon
                    grouper.set_away(session.camera, now)  # before set_expected, so its view sets keep waiting
            await self._dispatch(grouper.set_expected(self._expected(session.group), now))

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
        self._check_owner(hello.group_id)  # where the stream belongs, before what it codes with
        dec = self._decoder
        if hello.format_version != dec.format_version:
            side = "the server" if hello.format_version > dec.format_version else "the node"
            raise IncompatibleNodeError(
                f"camera {cam} writes bitstream format version {hello.format_version}, this server reads version "
                f"{dec.format_version}; upgrade MVIC on {side}"
            )
        dec.check_node(hello)  # model and weights: the codec's one rule (IncompatibleNodeError)

    # ------------------------------------------------------------------------------------------ ownership
    def _check_owner(self, group: str) -> None:
        if self.membership is not None and not self.membership.owns(group):
            raise NotOwnerError(f"camera group {display(group)} is served by {self.membership.owner(group)} in this "
                                "cluster; reconnect (re-resolving the servers' name) and the node's ring_hash channel "
                                "picks it", self.membership.owner(group))

    async def rehome(self) -> None:
        """The membership changed (``cluster.Membership.on_change``): end the streams of the camera groups another
        server owns now, and decode their open view sets at once; their frames admitted here are still written and
        acknowledged, the rest is resent to the new owner."""
        if self.membership is None:
            return
        moved: set[str] = set()
        for session in list(self._sessions.values()):
            if session.closed or self.membership.owns(session.group):
                continue
            owner = self.membership.owner(session.group)
            moved.add(session.group)
            self.metrics.streams_moved.inc()
            session.close("the camera group moved to another server", NotOwnerError(
                f"camera group {display(session.group)} moved to {owner} in this cluster; reconnect to it", owner))
        now = self._clock()
        for group in moved:
            if (grouper := self._groupers.get(group)) is not None:
                await self._dispatch(grouper.flush(now))
        if moved:
            log.info("cluster: camera group(s) %s moved away; their streams end and their open view sets are "
                     "decoded now", ", ".join(sorted(display(g) for g in moved)))
        alive = len(self.membership.view.alive & set(self.membership.members))
        self.metrics.cluster_members.labels("alive").set(alive)
        self.metrics.cluster_members.labels("dead").set(len(self.membership.members) - alive)

    # -------------------------------------------------------------------------------------------- receive
    async def receive(self, session: Session, packet: IncomingPacket) -> None:
        """The one way in: a packet is dropped (a resend), refused alone, or admitted to its view set."""
        if not self._accepting or session.closed:
            return  # not admitted and not acked: the node sends it again after reconnecting
        camera, seq = session.camera, packet.sequence
        try:
            self._revocations.check(session.peer, camera)
        except RevokedError as exc:  # revoked while its stream was open: cut off at this message
            log.warning("camera %s (peer %s) is cut off: %s", camera, session.peer.describe(), exc)
            self.metrics.revoked.inc()
            session.close("revoked", exc)
            return
        session.last_message_s = self._clock()
        if not session.first_sequence and seq:
            session.first_sequence = seq
            self.acks.resumed_at(camera, seq)  # frames released here that the node no longer holds
        self.metrics.packets.labels(camera).inc()
        self.metrics.packet_bytes.labels(camera).inc(len(packet.bitstream))
        try:
            admission = self._classify(session, packet)
            if admission is not Admission.NEW:
                self.metrics.duplicates.labels(camera).inc()
                self.live.record_duplicate(camera, session.group)
                if admission is Admission.ACKED:
                    session.push_ack(self.acks.acked(camera))  # stored before: acknowledge again
                return
            bitstream = self._check_packet(session, packet)
        except PacketRejected as err:
            self._refuse(camera, session.group, err)
            return
        first = not self.acks.holds_slot(camera)
        try:
            self.acks.admit(camera, session.group, seq)
        except TooManyCamerasError as exc:  # others took the last slots since this camera connected
            log.warning("camera %s: %s", camera, exc)
            session.close("too many cameras", exc)
            return
        if first:
            self.live.set_connected(camera, session.group, True)
        view = ReceivedView(camera, session.group, seq, bitstream.header.capture_ns, packet.received_ns,
                            len(packet.bitstream), bitstream)
        grouper = self._grouper(session.group)
        if (expected := self._expected(session.group)) != grouper.expected:  # one delivered again after its drops
            await self._dispatch(grouper.set_expected(expected, self._clock()))
        await self._dispatch(grouper.add(view, self._clock()))
        session.last_message_s = self._clock()  # not idle while it waited for a decode slot

    def _classify(self, session: Session, packet: IncomingPacket) -> Admission:
        seq = packet.sequence
        if seq == 0:
            raise MalformedPacketError(seq, "ViewPacket.sequence must start at 1")
        admission = self.acks.classify(session.camera, seq)
        if admission is Admission.OUT_OF_ORDER:
            raise OutOfOrderError(seq, f"packet {session.camera}#{seq} is below the last sequence admitted and is "
                                       "neither stored nor in flight; sequences must increase")
        return admission

    def _check_packet(self, session: Session, packet: IncomingPacket) -> ViewBitstream:
        seq, limit = packet.sequence, self.config.max_packet_bytes
        if len(packet.bitstream) > limit:
            raise PacketTooLargeError(seq, f"bitstream of {len(packet.bitstream)} bytes exceeds this server's "
                                           f"max_packet_bytes ({limit}); lower the resolution or the rate")
        a = self.config.admission
        check_capture_time(seq, packet.capture_ns, packet.received_ns, a.max_capture_ahead_s, a.max_capture_age_s)
        try:
            bitstream = unpack(packet.bitstream)
        except BitstreamError as exc:
            raise MalformedPacketError(seq, f"packet {session.camera}#{seq}: {exc}") from None
        h = bitstream.header
        for what, got, want in (("camera id", h.camera_id, session.camera), ("sequence", h.sequence, seq),
                                ("capture time", h.capture_ns, packet.capture_ns)):
            if got != want:
                raise MalformedPacketError(seq, f"packet {session.camera}#{seq}: bitstream header {what} {got!r} "
                                                f"disagrees with the stream ({want!r})")
        self._decoder.check_header(h)
        hp, wp = h.padded_size
        if hp * wp > (most := self.config.limits.max_view_pixels):
            raise ViewTooLargeError(seq, f"view {session.camera}#{seq} is {h.width}x{h.height} ({hp * wp} pixels "
                                         f"padded), over this server's limits.max_view_pixels ({most}); lower the "
                                         "camera's resolution or raise the limit")
        self._decoder.check_stream(bitstream)  # a stream too short for its declared size: MalformedPacketError
        return bitstream

    def _refuse(self, camera: str, group: str, err: PacketRejected) -> None:
        """A packet rejected for good: a counter, a log line and a PacketError to the camera's stream."""
        self.metrics.packet_rejected(camera, err)
        self.live.record_rejected(camera, group)
        log.warning("rejected %s#%d (%s): %s", camera, err.sequence, err.reason, err)
        if (session := self._sessions.get(camera)) is not None:
            session.push_reject(err)

    # ---------------------------------------------------------------------------------- group -> decode
    async def _dispatch(self, view_sets: list[ViewSet]) -> None:
        """Hand the sets the grouper let go to the decoder. Waiting for a decode slot is backpressure on the calling
        stream; if that stream ends while it waits, the sets still reach the decoder (their views are in flight in
        the ack book, and no resend could bring them back)."""
        if not view_sets:
            return
        task = asyncio.ensure_future(self._submit(view_sets))
        self._submitting.add(task)
        task.add_done_callback(self._submitting.discard)
        await asyncio.shield(task)

    async def _submit(self, view_sets: list[ViewSet]) -> None:
        for view_set in view_sets:
            self.metrics.view_set_decoded(view_set)
            for i, part in enumerate(decode_units(view_set, self.config.limits.max_set_pixels)):
                await self._slots.acquire()  # backpressure: the calling stream waits for a free slot
                if i == 0:
                    self.metrics.group_wait.observe(max(0.0, self._clock() - view_set.opened_s))
                future = self._pipeline.submit(part)
                future.add_done_callback(lambda _: self._sink_wakeup.set())
                self._queue.put_nowait((part, future))
                self._sink_wakeup.set()
                self.metrics.inflight_groups.inc()

    async def expire(self) -> None:
        """Send the view sets whose wait is over to the decoder and end the streams idle for longer than
        admission.idle_timeout_s (the timeout task calls this; so can a test that moves its clock)."""
        now = self._clock()
        idle_s = self.config.admission.idle_timeout_s
        for session in list(self._sessions.values()):
            if idle_s and now - session.last_message_s > idle_s and not session.closed:
                log.info("camera %s sent nothing for %g s (admission.idle_timeout_s): its stream ends", session.camera,
                         idle_s)
                session.close("idle", StreamTimeoutError(
                    f"camera {session.camera} sent nothing for {idle_s:g} s (admission.idle_timeout_s); reconnect "
                    "when there are frames to send"))
        for group_id, grouper in list(self._groupers.items()):
            await self._dispatch(grouper.expire(now))
            if not grouper.open_sets and not grouper.awaiting and not self._connected(group_id) \
                    and self._groupers.get(group_id) is grouper:
                del self._groupers[group_id]  # camera groups come and go: keep only live ones
        self.metrics.open_groups.set(sum(g.open_sets for g in self._groupers.values()))
        self.metrics.owned_groups.set(len({s.group for s in self._sessions.values()}))

    async def _expire_loop(self) -> None:
        while True:
            deadlines = [d for g in self._groupers.values() if (d := g.next_deadline()) is not None]
            wait = min(deadlines) - self._clock() if deadlines else 0.1
            await asyncio.sleep(min(max(wait, 0.002), 0.1))
            await self.expire()

    # ------------------------------------------------------------------------------------ sink -> ack
    async def _sink_loop(self) -> None:
        """Complete the dispatched parts as they are decoded, each camera's in emission order."""
        inflight: list[tuple[ViewSet, asyncio.Future[DecodeResult]]] = []  # emission order
        while True:
            while not self._queue.empty():
                inflight.append(self._queue.get_nowait())
            if (next_done := _next_done(inflight)) is None:
                self._sink_wakeup.clear()
                await self._sink_wakeup.wait()
                continue
            view_set, future = inflight.pop(next_done)
            try:
                await self._complete(view_set, future)
            except Exception as exc:  # a bug here must not stop the server, nor leave the frames in flight
                log.exception("sink stage failed for view set %s; its frames are resent", view_set.cameras)
                self._release(view_set.views, exc)
            finally:
                self._slots.release()
                self.metrics.inflight_groups.dec()
                self._queue.task_done()

    async def _complete(self, view_set: ViewSet, future: asyncio.Future[DecodeResult]) -> None:
        """The one way out: each view of the set leaves rejected, stored or released."""
        try:
            result = await future
        except Exception as exc:
            log.exception("decoding view set %s failed", view_set.cameras)
            result = DecodeResult(view_set, (), tuple(
                FailedView(v, DecodeFailedError(v.sequence, f"decoder error: {exc}")) for v in view_set.views), 0.0)
        for view, error in result.failed:
            self.acks.reject(view.camera_id, view.sequence)
            self._refuse(view.camera_id, view.group_id, error)
        start = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(self._io_pool, self._write, result)
        except OSError as exc:
            self.metrics.sink_errors.inc()
            log.error("cannot write reconstructions of %s (%s); they are not acked and their nodes resend them",
                      view_set.cameras, exc)
            self._release([f.source for f in result.frames], exc)
            written = ()
        else:
            self.metrics.write_seconds.observe(time.perf_counter() - start)
            for frame in result.frames:
                self.acks.stored(frame.source.camera_id, frame.source.sequence)
                self._drops.delivered(frame.source.camera_id)
            written = result.frames
        released = await self._commit()
        acked_ns = self._wall_ns()
        for frame in written:
            if frame.source.camera_id not in released:
                self.metrics.frame_written(frame, acked_ns)
        for camera in {v.camera_id for v in view_set.views}:
            if (session := self._sessions.get(camera)) is not None:
                self._close_if_done(session)

    def _write(self, result: DecodeResult) -> None:
        self.sinks.write(result.frames)
        self.live.record_frames(result.frames, self._wall_ns())

    async def _commit(self) -> frozenset[str]:
        """Journal and send the acks that moved; the cameras whose frames were released instead."""
        commit = await self.acks.commit(self._io_pool)
        if commit.error is not None:
            self.metrics.sink_errors.inc()
            log.error("cannot write the ack journal %s (%s); the frames it would have acknowledged are resent",
                      self.acks.path, commit.error)
            self._end_streams(commit.released, commit.error)
        for camera, acked in commit.acked.items():
            self.metrics.acked_sequence.labels(camera).set(acked)
            if (session := self._sessions.get(camera)) is not None:
                self.live.record_ack(camera, session.group, acked)
                session.push_ack(acked)
        return frozenset(commit.released)

    def _release(self, views: Iterable[ReceivedView], cause: Exception) -> None:
        """Frames that were not stored: the ack book holds their cameras' acks below them until they are resent."""
        cameras = set()
        for view in views:
            self.acks.release(view.camera_id, view.sequence)
            cameras.add(view.camera_id)
        self._end_streams(cameras, cause)

    def _end_streams(self, cameras: Iterable[str], cause: Exception) -> None:
        """End the cameras' streams with UNAVAILABLE: their nodes reconnect and resend what is not acked."""
        for camera in cameras:
            if (session := self._sessions.get(camera)) is not None:
                session.close("frames not stored", StorageError(
                    f"the server could not store frames of camera {camera} ({cause}); reconnect with backoff and "
                    "resend everything after the last ack"))

    def _close_if_done(self, session: Session) -> None:
        if session.input_done and self.acks.unsettled(session.camera) == 0:
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

    def _expected(self, group_id: str) -> frozenset[str]:
        """The connected cameras its view sets wait for: not those whose streams keep breaking (``DropCounts``)."""
        return frozenset(c for c in self._connected(group_id) if not self._drops.excluded(c))


def _next_done(inflight: list[tuple[ViewSet, asyncio.Future[DecodeResult]]]) -> int | None:
    """Index of the first decoded part that no earlier part in flight shares a camera with; None when there is none
    (a camera's frames are written, and so acknowledged, in the order its views were emitted)."""
    held: set[str] = set()
    for i, (view_set, future) in enumerate(inflight):
        cameras = set(view_set.cameras)
        if future.done() and not cameras & held:
            return i
        held |= cameras
    return None
