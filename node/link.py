"""The link: one long-lived gRPC stream to the fusion server, fed from the spool. Last hop on the node.

Hop before: ``mvic.node.spool.Spool`` (durable packets in sequence order). Hop after: the fusion server's
``Fusion.Stream`` (``proto/mvic/v1/mvic.proto``), which groups views by capture time and decodes them jointly.

One stream at a time, for the node's whole life:

    Hello (camera, group, model id, weights hash, format version, node version, session start)  -> server
    server -> Welcome(acked_sequence, max_packet_bytes)   the spool drops what is acked; everything above is
                                                           (re)sent in sequence order, at most max_in_flight unacked
    ViewPacket(sequence, capture_ns, sent_ns, bitstream)   -> server, as the encoder spools them
    server -> Ack(acked_sequence)                          cumulative: the spool deletes everything up to it
    server -> PacketError(sequence, code, message)         that packet is deleted, counted and logged

The Hello and the Welcome are the shared records ``mvic.shared.rpc.hello.Hello`` / ``Welcome``; camera and group
also travel as gRPC metadata (``Hello.metadata()``: ``mvic.shared.rpc.CAMERA_METADATA_KEY`` / ``GROUP_METADATA_KEY``).
``_receive`` is the one place where server messages are turned from protobuf into those records and numbers.

Concurrency (grpc's asyncio route_guide): ``run`` runs an asyncio loop on the orchestrator's link thread, with one
``grpc.aio`` channel. Each stream attempt is two tasks, one per direction: ``_send`` writes the Hello, then spooled
packets in sequence order (at most ``max_in_flight`` unacked); ``_receive`` reads Welcome, Acks and PacketErrors.
``_supervise`` watches the handshake deadline, the stop and the drain. Nothing polls: the spool (written by the
encoder thread), ``stop`` and ``drain`` wake the loop through ``_poke`` (``call_soon_threadsafe``).

Implausible replies (issue 13). The spool deletes only what may have reached a server (``Spool.ack`` raises
``ImplausibleAckError`` above ``Spool.sent_sequence``), and the link turns that into a refusal: a Welcome that
claims more than this node ever sent closes the stream like a refusal (ERROR with what to fix, retried every
``refused_backoff_s``, spool and numbering untouched); an Ack above the highest sent sequence resets the stream;
a PacketError for a sequence never sent is ignored. Each is counted in
``mvic_node_implausible_replies_total{kind}`` and logged at most every ``IMPLAUSIBLE_LOG_EVERY_S``.

When the stream breaks (server restart, network cut, keepalive timeout, no Welcome within handshake_timeout_s) the
link reconnects after an exponential backoff with jitter (``backoff_initial_s`` doubling up to ``backoff_max_s``,
each wait drawn in [d/2, d]; reset after a Welcome). A refusal (FAILED_PRECONDITION: model, weights or format differ;
PERMISSION_DENIED: unknown camera; INVALID_ARGUMENT: bad Hello) is logged at ERROR with what to fix and retried every
``refused_backoff_s``, so the camera comes back by itself once the server or the node is upgraded.

Several servers (README: Scaling out): ``target`` may name them all (``dns:///...``, ``ipv4:a,b``); the channel's
ring_hash policy (``channel.ChannelFactory``, ``link.lb``) sends each stream to the server owning this camera's
group. A server that does not (or no longer) own it ends the stream with UNAVAILABLE and the owner's address in the
``mvic-owner`` trailer (``mvic.shared.rpc.OWNER_METADATA_KEY``): the link opens a new channel, so that the name is
resolved again, and reconnects after the ordinary short backoff (not ``refused_backoff_s``); the new owner's Welcome
may claim less than this node's acks (each server has its own journal), which only means resending from the spool.

Mutual TLS (``tls`` in node.yaml): the channel comes from ``channel.ChannelFactory``, with this camera's
certificate. When its files change (a renewal) the supervisor finishes the stream like a drain (half-close, the
server acknowledges what it holds) and ``_main`` reconnects at once on a new channel; the spool resends what is
left unacknowledged, which the server takes once (its ack book drops a resend of a stored or pending frame).

Stopping: once ``stop`` is set the link never reconnects; a live stream keeps sending until ``drain(timeout)``
(called by the orchestrator after the encoder has spooled its last frame), waits up to the timeout for the last
acks, half-closes the stream and returns. Unacked packets stay in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from contextlib import suppress

import grpc

from mvic.node.channel import ChannelFactory
from mvic.node.config import LinkConfig, TlsConfig
from mvic.node.errors import ImplausibleAckError
from mvic.node.metrics import NodeMetrics
from mvic.node.spool import Spool, SpooledPacket
from mvic.shared.ids import display
from mvic.shared.rpc import DEFAULT_MAX_PACKET_BYTES, OWNER_METADATA_KEY, channel_options, max_message_bytes
from mvic.shared.rpc import mvic_pb2 as pb
from mvic.shared.rpc.hello import Hello, Welcome
from mvic.shared.rpc.mvic_pb2_grpc import FusionStub

log = logging.getLogger(__name__)

#: Largest bitstream this node will ever send, bytes (the server's Welcome may lower it).
NODE_MAX_PACKET_BYTES = 64 << 20
#: Implausible server replies are logged at most this often (each one is counted).
IMPLAUSIBLE_LOG_EVERY_S = 10.0
#: Characters of server-supplied text (error details, versions) shown in a log line.
SERVER_TEXT_CHARS = 160
#: Longest wait between two looks at the deadlines when nothing wakes the loop (a safety net, not a poll).
IDLE_RECHECK_S = 1.0
#: Statuses that mean "the server will not take this camera as it is": retried slowly, logged at ERROR.
REFUSALS = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED)
_REFUSAL_ADVICE = {
    grpc.StatusCode.FAILED_PRECONDITION: "install the same MVIC release and weights file on node and server "
                                         "(see the server's message for which side to upgrade)",
    grpc.StatusCode.PERMISSION_DENIED: "add the camera to the server's camera list, fix --camera / --group, or "
                                       "give the node an unrevoked certificate of this camera (--tls-cert)",
    grpc.StatusCode.INVALID_ARGUMENT: "check --camera and --group (1..64 printable characters)",
    grpc.StatusCode.UNIMPLEMENTED: "the address is not an MVIC fusion server, or one without the mvic.v1 protocol",
    grpc.StatusCode.UNAUTHENTICATED: "the server requires credentials this node does not have",
}


class _Stream:
    """State of one stream attempt, shared by its sender, receiver and supervisor (all on the link's loop)."""

    def __init__(self):
        self.welcomed = asyncio.Event()
        self.closing = False  # the sender should half-close and finish
        self.ended = asyncio.Event()  # the response side is over
        self.cursor = 0  # highest sequence handed to gRPC in this stream
        self.max_packet_bytes = DEFAULT_MAX_PACKET_BYTES
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.refusal = ""  # set when this node refused the server's Welcome: why, and what to do
        self.renew = False  # this node's certificate was renewed: the stream was finished to reconnect with it
        self.owner = ""  # the server said another server of the cluster owns this camera's group (its address)


class Link:
    """Spool -> server over one bidirectional stream, reconnecting until stopped. ``run`` blocks (a thread)."""

    def __init__(self, target: str, hello: Hello, spool: Spool, config: LinkConfig, metrics: NodeMetrics,
                 stop: threading.Event, tls: TlsConfig | None = None):
        hello.check()  # the server would refuse it on every attempt
        self.target = target
        self.tls = tls  # mutual TLS (ca, cert, key, server_name); None or empty = plaintext
        self._channels: ChannelFactory | None = None
        self.hello = hello
        self.spool = spool
        self.config = config
        self.metrics = metrics
        self.stop = stop
        self.connected = threading.Event()
        self._drain_deadline: float | None = None
        self._max_sent = 0
        self._metadata = hello.metadata()
        self._implausible_logged_at = float("-inf")
        self._implausible_unlogged = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None  # replaced at every poke: a waiter holding the old one is woken

    def channel_options(self) -> list[tuple[str, int]]:
        backoff_ms = int(self.config.backoff_max_s * 1000)
        options = dict(channel_options())
        options.update({
            "grpc.max_send_message_length": max_message_bytes(NODE_MAX_PACKET_BYTES),
            # gRPC's own reconnect backoff (default up to 120 s) must not outlast ours
            "grpc.initial_reconnect_backoff_ms": int(self.config.backoff_initial_s * 1000),
            "grpc.min_reconnect_backoff_ms": int(self.config.backoff_initial_s * 1000),
            "grpc.max_reconnect_backoff_ms": backoff_ms,
        })
        return list(options.items())

    def drain(self, timeout: float) -> None:
        """Finish: send what is spooled, wait up to ``timeout`` s for the acks, then close (stop must be set).
        Called from the orchestrator's thread."""
        self._drain_deadline = time.monotonic() + timeout
        self._poke()

    # ------------------------------------------------------------------------------------------ wake-ups
    def _poke(self) -> None:
        """Wake every waiter of the loop; safe from any thread, and after the loop has ended."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._wake_all)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _wake_all(self) -> None:
        woken, self._wake = self._wake, asyncio.Event()
        woken.set()

    @staticmethod
    async def _wait_event(wake: asyncio.Event, timeout: float | None) -> None:
        """Wait until ``wake`` is set (a poke), at most ``timeout`` s (and IDLE_RECHECK_S). Callers take
        ``self._wake`` *before* checking their condition, so a poke between the check and the wait is not lost."""
        with suppress(TimeoutError):
            async with asyncio.timeout(IDLE_RECHECK_S if timeout is None else min(IDLE_RECHECK_S, timeout)):
                await wake.wait()

    # ----------------------------------------------------------------------------------- reconnect loop
    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.spool.add_listener(self._poke)
        threading.Thread(target=lambda: (self.stop.wait(), self._poke()), name="mvic-link-stop", daemon=True).start()
        self._channels = ChannelFactory(self.target, self.channel_options(), self.tls, self.config.lb)
        channel = self._channels.open()
        stub = FusionStub(channel)
        attempt = 0
        streams = 0
        try:
            while not self.stop.is_set():
                if streams:
                    self.metrics.reconnects.inc()
                streams += 1
                st = await self._run_stream(stub)
                if self.stop.is_set():
                    break
                if st.renew or self._channels.renewed():  # a new certificate: a new channel, at once
                    log.info("reconnecting to %s with the renewed certificate %s; %d packet(s) spooled", self.target,
                             self.tls.cert, self.spool.pending)
                    await channel.close()
                    channel = self._channels.open()
                    stub = FusionStub(channel)
                    continue
                if st.owner:  # the group lives on another server: resolve the name again, reconnect soon
                    await channel.close()
                    channel = self._channels.open()
                    stub = FusionStub(channel)
                if st.refusal:
                    delay = self.config.refused_backoff_s * random.uniform(0.8, 1.2)
                    log.error("refusing server %s's Welcome: %s. Retrying in %.0f s", self.target, st.refusal, delay)
                    self.metrics.set_connection("refused")
                elif st.code in REFUSALS and not st.welcomed.is_set():
                    delay = self.config.refused_backoff_s * random.uniform(0.8, 1.2)
                    log.error("server %s refused camera %s: %s: %s. To fix: %s. Retrying in %.0f s", self.target,
                              self.hello.camera_id, st.code.name, display(st.details, SERVER_TEXT_CHARS),
                              _REFUSAL_ADVICE[st.code], delay)
                    self.metrics.set_connection("refused")  # after the log: a watcher of the state finds the reason
                else:
                    attempt = 0 if st.welcomed.is_set() else attempt
                    ceiling = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** attempt)
                    delay = random.uniform(ceiling / 2, ceiling)
                    attempt += 1
                    self.metrics.set_connection("disconnected")
                    what = "stream ended" if st.welcomed.is_set() else "cannot connect"
                    details = (st.details or "-").split("; last error:")[0][:SERVER_TEXT_CHARS]  # gRPC's is long
                    if st.owner:
                        what = "camera group moved" if st.welcomed.is_set() else "camera group served elsewhere"
                    log.log(logging.INFO if st.owner else logging.WARNING,
                            "%s to %s (%s: %s); %d packet(s) spooled; retrying in %.3g s", what, self.target,
                            st.code.name if st.code else "?", display(details, SERVER_TEXT_CHARS),
                            self.spool.pending, delay)
                await self._sleep(delay)
        finally:
            self.spool.remove_listener(self._poke)
            self.connected.clear()
            self.metrics.set_connection("disconnected")
            await channel.close()
            self._loop = None

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when stop is set."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            await self._wait_event(self._wake, remaining)

    async def _run_stream(self, stub: FusionStub) -> _Stream:
        st = _Stream()
        self.metrics.set_connection("connecting")
        call = stub.Stream(metadata=self._metadata)
        sender = asyncio.create_task(self._send(call, st), name="mvic-link-send")
        receiver = asyncio.create_task(self._receive(call, st), name="mvic-link-receive")
        try:
            await self._supervise(call, st)
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            self.connected.clear()
        return st

    async def _supervise(self, call, st: _Stream) -> None:
        """Until the stream ends: drop it when no Welcome comes in time; once stopped, half-close it when the
        spool is empty or the drain time is over (at once when not welcomed)."""
        handshake_deadline = time.monotonic() + self.config.handshake_timeout_s
        while not st.ended.is_set():
            wake = self._wake
            now = time.monotonic()
            if not self.stop.is_set() and self._channels.renewed():
                await self._finish_for_renewal(call, st)
                return
            if not st.welcomed.is_set() and now > handshake_deadline:
                log.warning("no Welcome from %s within %g s; dropping the stream", self.target,
                            self.config.handshake_timeout_s)
                call.cancel()
                return
            if self.stop.is_set() and (not st.welcomed.is_set() or (self._drain_deadline is not None and (
                    self.spool.pending == 0 or now > self._drain_deadline))):
                if self.spool.pending:
                    log.info("closing the stream with %d unacked packet(s) spooled; they are sent on the next "
                             "start", self.spool.pending)
                st.closing = True  # the sender half-closes the stream
                self._wake_all()
                with suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await st.ended.wait()
                if not st.ended.is_set():
                    call.cancel()
                return
            deadlines = [handshake_deadline] if not st.welcomed.is_set() else []
            if self.stop.is_set() and self._drain_deadline is not None:
                deadlines.append(self._drain_deadline)
            # woken by the receiver (Welcome, acks, the end), the spool, stop and drain; or at the next deadline
            await self._wait_event(wake, max(0.0, min(deadlines) - now) + 0.001 if deadlines else None)

    async def _finish_for_renewal(self, call, st: _Stream) -> None:
        """The certificate files changed: half-close the stream so that the server acknowledges what it holds (up
        to drain_timeout_s, then cancel), for ``_main`` to reconnect on a channel with the new certificate."""
        log.info("certificate %s renewed: finishing the stream to %s and reconnecting with it", self.tls.cert,
                 self.target)
        st.renew = True
        if st.welcomed.is_set():
            st.closing = True  # the sender half-closes; the server ends the stream once everything sent is acked
            self._wake_all()
            with suppress(TimeoutError):
                async with asyncio.timeout(max(self.config.drain_timeout_s, 0.1)):
                    await st.ended.wait()
        if not st.ended.is_set():
            call.cancel()

    # ------------------------------------------------------------------------------ node -> server
    async def _send(self, call, st: _Stream) -> None:
        """One direction: the Hello, then spooled packets in order as they come, until closing."""
        try:
            await call.write(pb.NodeMessage(hello=self.hello.to_proto()))
            await st.welcomed.wait()
            while True:
                wake = self._wake
                if st.closing:
                    await call.done_writing()
                    return
                packet = None
                if self.spool.count_through(st.cursor) < self.config.max_in_flight:  # else: wait for acks
                    packet = self.spool.next_after(st.cursor)
                if packet is None:
                    await self._wait_event(wake, None)
                    continue
                st.cursor = packet.sequence
                message = await self._packet_message(packet, st)
                if message is not None:
                    await call.write(message)
        except asyncio.CancelledError:
            raise
        except (grpc.RpcError, asyncio.InvalidStateError):
            log.debug("the link's sender stops: the stream ended")  # the receiver reports how
        except Exception:
            log.exception("the link's sender failed; the stream is closed and reopened")
            call.cancel()

    async def _packet_message(self, packet: SpooledPacket, st: _Stream) -> pb.NodeMessage | None:
        if packet.size > st.max_packet_bytes:
            if self.spool.discard(packet.sequence, "too_large"):
                log.error("packet %d is %d bytes, over the server's limit of %d bytes; dropped. Lower --rate or the "
                          "resolution, or raise the server's max packet size", packet.sequence, packet.size,
                          st.max_packet_bytes)
            return None
        data = await asyncio.to_thread(self.spool.read, packet.sequence)
        if data is None:  # acked, rejected or dropped since we looked
            return None
        if packet.sequence <= self._max_sent:
            self.metrics.packets_resent.inc()
        self._max_sent = max(self._max_sent, packet.sequence)
        self.spool.mark_sent(packet.sequence)  # before gRPC has it: an ack of it is plausible from now on
        self.metrics.packets_sent.inc()
        return pb.NodeMessage(packet=pb.ViewPacket(sequence=packet.sequence, capture_ns=packet.capture_ns,
                                                   sent_ns=time.time_ns(), bitstream=data))

    # ------------------------------------------------------------------------------ server -> node
    async def _receive(self, call, st: _Stream) -> None:
        """The other direction: each server message, from protobuf to the shared records, to its handler."""
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                kind = message.WhichOneof("kind")
                if kind == "welcome":
                    if not self._on_welcome(Welcome.from_proto(message.welcome), st):
                        call.cancel()
                        return
                elif kind == "ack":
                    if not self._on_ack(message.ack.acked_sequence):
                        st.code, st.details = grpc.StatusCode.CANCELLED, "implausible acknowledgement from the server"
                        call.cancel()
                        return
                elif kind == "error":
                    error = message.error
                    self._on_error(error.sequence, _error_code_name(error.code), error.message)
                else:
                    log.warning("ignoring a server message of unknown kind %r (newer server?)", kind)
            code = await call.code()
            st.code, st.details = code, await call.details() or "the server closed the stream"
            st.owner = _owner(await call.trailing_metadata())
        except grpc.aio.AioRpcError as exc:
            st.code, st.details = exc.code(), exc.details() or ""
            st.owner = _owner(exc.trailing_metadata())
        except asyncio.CancelledError:
            if st.code is None:
                st.code, st.details = grpc.StatusCode.CANCELLED, "the stream was closed by this node"
            raise
        except Exception as exc:
            log.exception("handling a server message failed; reconnecting")
            st.code, st.details = grpc.StatusCode.INTERNAL, f"node error: {exc}"
            call.cancel()
        finally:
            st.ended.set()
            self._wake_all()

    def _on_welcome(self, welcome: Welcome, st: _Stream) -> bool:
        """Take the server's Welcome; False (stream to be closed) when it claims what this node never sent."""
        known = self.spool.acked_sequence
        stored = welcome.stored_through
        try:
            removed = self.spool.ack(stored)
        except ImplausibleAckError as exc:
            self.metrics.implausible("welcome")
            st.refusal = str(exc)
            return False
        if stored < known:  # with several servers: another one acknowledged them (each has its own journal)
            log.log(logging.INFO if self._channels.lb == "ring_hash" and _names_several(self.target) else
                    logging.WARNING,
                    "server %s reports camera %s stored up to %d, below the %d acknowledged before (another server "
                    "of the cluster, or server state lost); packets up to %d were deleted here and are not resent",
                    self.target, self.hello.camera_id, stored, known, known)
        self._acked(removed)
        st.max_packet_bytes = welcome.packet_limit(NODE_MAX_PACKET_BYTES)
        st.cursor = stored
        resend = self.spool.pending
        self.metrics.set_connection("connected")
        self.connected.set()
        log.info("connected to %s (server %s) as %s: server has stored up to sequence %d; sending %d spooled "
                 "packet(s)", self.target, display(welcome.server_version or "?", SERVER_TEXT_CHARS),
                 self.hello.camera_id, stored, resend)
        st.welcomed.set()
        self._wake_all()
        return True

    def _on_ack(self, acked_sequence: int) -> bool:
        """A cumulative Ack; False (stream to be reset) when it is above the highest sequence sent."""
        try:
            self._acked(self.spool.ack(acked_sequence))
        except ImplausibleAckError as exc:
            self.metrics.implausible("ack")
            self._log_implausible(f"{exc}; resetting the stream")
            return False
        return True

    def _acked(self, removed: list[SpooledPacket]) -> None:
        if not removed:
            return
        now = time.time_ns()
        self.metrics.packets_acked.inc(len(removed))
        for packet in removed:
            self.metrics.ack_latency_seconds.observe(max(0, now - packet.capture_ns) / 1e9)

    def _on_error(self, sequence: int, code: str, message: str) -> None:
        """A PacketError: the server will never take packet ``sequence``; it is deleted and counted."""
        if sequence > self.spool.sent_sequence:
            self.metrics.implausible("packet_error")
            self._log_implausible(f"the server rejected packet {sequence} ({code}), which this node has not sent "
                                  f"(highest sent: {self.spool.sent_sequence}); ignored, nothing was deleted")
            return
        self.metrics.rejected(code)
        dropped = self.spool.discard(sequence, "rejected")
        level = logging.WARNING if code == "out_of_order" else logging.ERROR
        log.log(level, "server rejected packet %d (%s): %s%s", sequence, code, display(message, SERVER_TEXT_CHARS),
                "" if dropped else " (already gone from the spool)")

    def _log_implausible(self, text: str) -> None:
        """ERROR, at most every IMPLAUSIBLE_LOG_EVERY_S; the ones left out are counted into the next line."""
        now = time.monotonic()
        if now - self._implausible_logged_at < IMPLAUSIBLE_LOG_EVERY_S:
            self._implausible_unlogged += 1
            return
        more = f" ({self._implausible_unlogged} more since the last such line)" if self._implausible_unlogged else ""
        log.error("implausible reply from server %s: %s%s", self.target, text, more)
        self._implausible_logged_at = now
        self._implausible_unlogged = 0


def _owner(trailers) -> str:
    """The ``mvic-owner`` trailer (a cluster server's "another server owns this group"), bounded; "" without one."""
    for key, value in trailers or ():
        if key == OWNER_METADATA_KEY:
            return display(value if isinstance(value, str) else repr(value), SERVER_TEXT_CHARS) or "?"
    return ""


def _names_several(target: str) -> bool:
    """The target may resolve to several servers (a DNS name, or an ipv4:/ipv6: list with a comma)."""
    return target.startswith("dns:") or "," in target


def _error_code_name(code: int) -> str:
    """PacketError.code as a metric label: ERROR_CODE_TOO_LARGE -> "too_large"; "unknown" for a newer code."""
    try:
        return pb.ErrorCode.Name(code).removeprefix("ERROR_CODE_").lower()
    except ValueError:
        return "unknown"
