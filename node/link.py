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

The Hello is ``mvic.shared.rpc.hello.Hello``, the record the server reads back; camera and group also travel as
gRPC metadata (``Hello.metadata()``: ``mvic.shared.rpc.CAMERA_METADATA_KEY`` / ``GROUP_METADATA_KEY``).
When the stream breaks (server restart, network cut, keepalive timeout, no Welcome within handshake_timeout_s) the
link reconnects after an exponential backoff with jitter (``backoff_initial_s`` doubling up to ``backoff_max_s``,
each wait drawn in [d/2, d]; reset after a Welcome). A refusal (FAILED_PRECONDITION: model, weights or format differ;
PERMISSION_DENIED: unknown camera; INVALID_ARGUMENT: bad Hello) is logged at ERROR with what to fix and retried every
``refused_backoff_s``, so the camera comes back by itself once the server or the node is upgraded.

Stopping: once ``stop`` is set the link never reconnects; a live stream keeps sending until ``drain(timeout)``
(called by the orchestrator after the encoder has spooled its last frame), waits up to the timeout for the last
acks, half-closes the stream and returns. Unacked packets stay in the spool for the next start.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import grpc

from mvic.node.config import LinkConfig
from mvic.node.metrics import NodeMetrics
from mvic.node.spool import SpooledPacket, Spool
from mvic.shared.rpc import DEFAULT_MAX_PACKET_BYTES, channel_options, max_message_bytes
from mvic.shared.rpc import mvic_pb2 as pb
from mvic.shared.rpc.hello import Hello
from mvic.shared.rpc.mvic_pb2_grpc import FusionStub

log = logging.getLogger(__name__)

#: Largest bitstream this node will ever send, bytes (the server's Welcome may lower it).
NODE_MAX_PACKET_BYTES = 64 << 20
#: Statuses that mean "the server will not take this camera as it is": retried slowly, logged at ERROR.
REFUSALS = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED)
_REFUSAL_ADVICE = {
    grpc.StatusCode.FAILED_PRECONDITION: "install the same MVIC release and weights file on node and server "
                                         "(see the server's message for which side to upgrade)",
    grpc.StatusCode.PERMISSION_DENIED: "add the camera to the server's camera list, or fix --camera",
    grpc.StatusCode.INVALID_ARGUMENT: "check --camera and --group (1..64 printable characters)",
    grpc.StatusCode.UNIMPLEMENTED: "the address is not an MVIC fusion server, or one without the mvic.v1 protocol",
    grpc.StatusCode.UNAUTHENTICATED: "the server requires credentials this node does not have",
}


class _Stream:
    """State of one stream attempt, shared by the request generator, the response reader and the supervisor."""

    def __init__(self):
        self.welcomed = threading.Event()
        self.closing = threading.Event()  # the request generator should finish (half-close)
        self.ended = threading.Event()  # the response side is over
        self.cursor = 0  # highest sequence handed to gRPC in this stream
        self.max_packet_bytes = DEFAULT_MAX_PACKET_BYTES
        self.code: grpc.StatusCode | None = None
        self.details = ""


class Link:
    """Spool -> server over one bidirectional stream, reconnecting until stopped."""

    def __init__(self, target: str, hello: Hello, spool: Spool, config: LinkConfig, metrics: NodeMetrics,
                 stop: threading.Event):
        hello.check()  # the server would refuse it on every attempt
        self.target = target
        self.hello = hello
        self.spool = spool
        self.config = config
        self.metrics = metrics
        self.stop = stop
        self.connected = threading.Event()
        self._drain_deadline: float | None = None
        self._max_sent = 0
        self._metadata = hello.metadata()

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
        """Finish: send what is spooled, wait up to ``timeout`` s for the acks, then close (stop must be set)."""
        self._drain_deadline = time.monotonic() + timeout

    # ----------------------------------------------------------------------------------- reconnect loop
    def run(self) -> None:
        channel = grpc.insecure_channel(self.target, options=self.channel_options())
        stub = FusionStub(channel)
        attempt = 0
        streams = 0
        try:
            while not self.stop.is_set():
                if streams:
                    self.metrics.reconnects.inc()
                streams += 1
                st = self._run_stream(stub)
                if self.stop.is_set():
                    break
                if st.code in REFUSALS and not st.welcomed.is_set():
                    delay = self.config.refused_backoff_s * random.uniform(0.8, 1.2)
                    log.error("server %s refused camera %s: %s: %s. To fix: %s. Retrying in %.0f s", self.target,
                              self.hello.camera_id, st.code.name, st.details, _REFUSAL_ADVICE[st.code], delay)
                    self.metrics.set_connection("refused")  # after the log: a watcher of the state finds the reason
                else:
                    attempt = 0 if st.welcomed.is_set() else attempt
                    ceiling = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** attempt)
                    delay = random.uniform(ceiling / 2, ceiling)
                    attempt += 1
                    self.metrics.set_connection("disconnected")
                    what = "stream ended" if st.welcomed.is_set() else "cannot connect"
                    details = (st.details or "-").split("; last error:")[0][:160]  # gRPC's text can be long
                    log.warning("%s to %s (%s: %s); %d packet(s) spooled; retrying in %.3g s", what, self.target,
                                st.code.name if st.code else "?", details, self.spool.pending, delay)
                self.stop.wait(delay)
        finally:
            self.connected.clear()
            self.metrics.set_connection("disconnected")
            channel.close()

    def _run_stream(self, stub: FusionStub) -> _Stream:
        st = _Stream()
        self.metrics.set_connection("connecting")
        call = stub.Stream(self._requests(st), metadata=self._metadata)
        reader = threading.Thread(target=self._read, args=(call, st), name="mvic-link-reader", daemon=True)
        reader.start()
        handshake_deadline = time.monotonic() + self.config.handshake_timeout_s
        while not st.ended.wait(0.05):
            now = time.monotonic()
            if not st.welcomed.is_set() and now > handshake_deadline:
                log.warning("no Welcome from %s within %g s; dropping the stream", self.target,
                            self.config.handshake_timeout_s)
                call.cancel()
                break
            if not self.stop.is_set():
                continue
            if not st.welcomed.is_set() or (self._drain_deadline is not None and (
                    self.spool.pending == 0 or now > self._drain_deadline)):
                if self.spool.pending:
                    log.info("closing the stream with %d unacked packet(s) spooled; they are sent on the next "
                             "start", self.spool.pending)
                st.closing.set()  # the request generator returns: the stream is half-closed
                if not st.ended.wait(1.0):
                    call.cancel()
                break
        reader.join(timeout=5.0)
        self.connected.clear()
        return st

    # ------------------------------------------------------------------------------ node -> server
    def _requests(self, st: _Stream):
        """Request generator, run by a gRPC thread: Hello, then spooled packets in order as they come."""
        yield pb.NodeMessage(hello=self.hello.to_proto())
        try:
            while not st.welcomed.wait(0.1):
                if st.closing.is_set() or st.ended.is_set():
                    return
            while not (st.closing.is_set() or st.ended.is_set()):
                if self.spool.count_through(st.cursor) >= self.config.max_in_flight:
                    st.ended.wait(0.02)  # window full: wait for acks
                    continue
                packet = self.spool.wait_after(st.cursor, timeout=0.1)
                if packet is None:
                    continue
                st.cursor = packet.sequence
                message = self._packet_message(packet, st)
                if message is not None:
                    yield message
        except Exception:
            log.exception("the link's sender failed; the stream is closed and reopened")

    def _packet_message(self, packet: SpooledPacket, st: _Stream) -> pb.NodeMessage | None:
        if packet.size > st.max_packet_bytes:
            if self.spool.discard(packet.sequence, "too_large"):
                log.error("packet %d is %d bytes, over the server's limit of %d bytes; dropped. Lower --rate or the "
                          "resolution, or raise the server's max packet size", packet.sequence, packet.size,
                          st.max_packet_bytes)
            return None
        data = self.spool.read(packet.sequence)
        if data is None:  # acked, rejected or dropped since we looked
            return None
        if packet.sequence <= self._max_sent:
            self.metrics.packets_resent.inc()
        self._max_sent = max(self._max_sent, packet.sequence)
        self.metrics.packets_sent.inc()
        return pb.NodeMessage(packet=pb.ViewPacket(sequence=packet.sequence, capture_ns=packet.capture_ns,
                                                   sent_ns=time.time_ns(), bitstream=data))

    # ------------------------------------------------------------------------------ server -> node
    def _read(self, call, st: _Stream) -> None:
        try:
            for message in call:
                kind = message.WhichOneof("kind")
                if kind == "welcome":
                    self._on_welcome(message.welcome, st)
                elif kind == "ack":
                    self._acked(self.spool.ack(message.ack.acked_sequence))
                elif kind == "error":
                    self._on_error(message.error)
                else:
                    log.warning("ignoring a server message of unknown kind %r (newer server?)", kind)
            st.code, st.details = grpc.StatusCode.OK, "the server closed the stream"
        except grpc.RpcError as exc:
            st.code, st.details = exc.code(), exc.details() or ""
        except Exception as exc:
            log.exception("handling a server message failed; reconnecting")
            st.code, st.details = grpc.StatusCode.INTERNAL, f"node error: {exc}"
            call.cancel()
        finally:
            st.ended.set()

    def _on_welcome(self, welcome: pb.Welcome, st: _Stream) -> None:
        known = self.spool.acked_sequence
        acked = welcome.acked_sequence if welcome.has_acked else 0
        if acked < known:
            log.warning("server %s reports camera %s stored up to %d, below the %d it acknowledged before (server "
                        "state lost?); packets up to %d were deleted here and cannot be resent", self.target,
                        self.hello.camera_id, acked, known, known)
        self._acked(self.spool.server_acked(acked))
        st.max_packet_bytes = min(welcome.max_packet_bytes or DEFAULT_MAX_PACKET_BYTES, NODE_MAX_PACKET_BYTES)
        st.cursor = acked
        resend = self.spool.pending
        self.metrics.set_connection("connected")
        self.connected.set()
        log.info("connected to %s (server %s) as %s: server has stored up to sequence %d; sending %d spooled "
                 "packet(s)", self.target, welcome.server_version or "?", self.hello.camera_id, acked, resend)
        st.welcomed.set()

    def _acked(self, removed: list[SpooledPacket]) -> None:
        if not removed:
            return
        now = time.time_ns()
        self.metrics.packets_acked.inc(len(removed))
        for packet in removed:
            self.metrics.ack_latency_seconds.observe(max(0, now - packet.capture_ns) / 1e9)

    def _on_error(self, error: pb.PacketError) -> None:
        try:
            code = pb.ErrorCode.Name(error.code).removeprefix("ERROR_CODE_").lower()
        except ValueError:
            code = "unknown"
        self.metrics.rejected(code)
        dropped = self.spool.discard(error.sequence, "rejected")
        level = logging.WARNING if error.code == pb.ERROR_CODE_OUT_OF_ORDER else logging.ERROR
        log.log(level, "server rejected packet %d (%s): %s%s", error.sequence, code, error.message,
                "" if dropped else " (already gone from the spool)")
