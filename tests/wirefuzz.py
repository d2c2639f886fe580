"""Hostile gRPC traffic for a running ``mvic-server``: raw ``NodeMessage`` bytes, so a case can carry what no
well-behaved client serialises (non-UTF-8 ids, malformed protobuf, oversized fields), plus ViewPackets with the
hostile bitstreams of ``tests/strategies.py``. Shared by ``tests/e2e/test_fuzz_server.py`` (bounded) and
``benchmarks/fuzz_server.py`` (the campaign).

Every case opens one stream, sends its messages, and reads until the server ends the stream or the deadline passes.
``Outcome.named`` is true when the server answered by name: an Ack or PacketError for each packet, or an end of
stream with one of the status codes a client is told to act on. UNKNOWN, INTERNAL, or silence past the deadline
(a hang) are failures.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import grpc
from hypothesis import strategies as st

from mvic.shared.bitstream import FORMAT_VERSION, ViewBitstream, pack
from mvic.shared.rpc import mvic_pb2 as pb

METHOD = "/mvic.v1.Fusion/Stream"
NAMED_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
               grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
               grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.CANCELLED}


@dataclass
class Outcome:
    code: grpc.StatusCode | None = None  # how the stream ended; None: still open at the deadline (we cancelled)
    acks: int = 0
    packet_errors: dict[str, int] = field(default_factory=dict)
    welcomed: bool = False
    unanswered: int = 0  # packets neither acked nor refused when the case ended
    seconds: float = 0.0

    @property
    def named(self) -> bool:
        """Answered by name: an end with a status the client can act on, or every packet acked or refused."""
        if self.code is None:
            return self.welcomed and not self.unanswered
        return self.code in NAMED_CODES

    def label(self) -> str:
        return self.code.name if self.code is not None else ("open, answered" if self.welcomed else "open, silent")


def hello_bytes(camera: bytes, group: bytes, model_id: int, weights_hash: bytes, version: int = FORMAT_VERSION,
                node_version: bytes = b"fuzz") -> bytes:
    """A Hello serialised by hand: its string fields may hold any bytes (protobuf refuses to write non-UTF-8)."""
    def field_bytes(number: int, data: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(data)) + data

    hello = (field_bytes(1, camera) + field_bytes(2, group) + _varint(3 << 3) + _varint(model_id)
             + field_bytes(4, weights_hash) + _varint(5 << 3) + _varint(version) + field_bytes(6, node_version))
    return field_bytes(1, hello)  # NodeMessage.hello


def packet_bytes(sequence: int, capture_ns: int, bitstream: bytes) -> bytes:
    return pb.NodeMessage(packet=pb.ViewPacket(sequence=sequence, capture_ns=capture_ns, sent_ns=time.time_ns(),
                                               bitstream=bitstream)).SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def hostile_sessions(draw, valid: list[ViewBitstream], packets, model_id: int, weights_hash: bytes):
    """[(raw NodeMessage bytes, packet sequence or None)]: a Hello (sane or hostile), then 0..3 packets or garbage."""
    fields = {"camera": draw(st.sampled_from([b"F1", b"F2", b"F3", b"F4"])), "group": b"", "model_id": model_id,
              "weights_hash": weights_hash, "version": FORMAT_VERSION, "node_version": b"fuzz"}
    hostile = {  # one field at a time, so most sessions get past the Hello and exercise the packets
        "camera": st.binary(max_size=80) | st.sampled_from([b"\xff\xfe", b"C1\nFORGED log line", b"x" * 70_000, b""]),
        "group": st.binary(max_size=40) | st.just(b"g\xff"),
        "model_id": st.sampled_from([model_id ^ 1, 0, 2**32 - 1]),
        "weights_hash": st.sampled_from([bytes(8), b"", weights_hash * 2, b"w" * (1 << 20)]),
        "version": st.sampled_from([FORMAT_VERSION + 1, 0, 2**32 - 1]),
        "node_version": st.sampled_from([b"v\n2026-01-01 00:00:00 ERROR forged", b"\xff" * 9, b"n" * 100_000]),
    }
    if draw(st.integers(0, 9)) < 3:
        name = draw(st.sampled_from(sorted(hostile)))
        fields[name] = draw(hostile[name])
    hello = hello_bytes(fields["camera"], fields["group"], fields["model_id"], fields["weights_hash"],
                        fields["version"], fields["node_version"])
    first = draw(st.sampled_from(["hello", "hello", "hello", "garbage", "packet-first"]))
    messages = []
    if first == "garbage":
        messages.append((draw(st.binary(max_size=256)), None))
    elif first == "packet-first":
        messages.append((packet_bytes(1, time.time_ns(), pack(valid[0])), None))
    else:
        messages.append((hello, None))
    for i in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["packet", "packet", "garbage", "huge-seq"]))
        if kind == "garbage":
            messages.append((draw(st.binary(max_size=512)), None))
        else:
            seq = 2**64 - 1 if kind == "huge-seq" else i + 1
            capture = draw(st.sampled_from([time.time_ns(), 2**63, 0, time.time_ns() + 10**12]))
            messages.append((packet_bytes(seq, capture, draw(packets)), seq))
    return messages


def run_session(channel: grpc.Channel, messages: list[tuple[bytes, int | None]], deadline_s: float,
                metadata=()) -> Outcome:
    """Send ``messages`` as raw bytes on one stream; read replies until the stream ends, every packet is answered
    (acked or refused), or ``deadline_s`` passes."""
    call_fn = channel.stream_stream(METHOD, request_serializer=None,
                                    response_deserializer=pb.ServerMessage.FromString)
    out = Outcome()
    outbox: queue.Queue[bytes | None] = queue.Queue()
    for data, _ in messages:
        outbox.put(data)
    unanswered = {seq for _, seq in messages if seq is not None}
    done = threading.Event()

    def requests():
        while True:
            try:
                item = outbox.get(timeout=0.1)
            except queue.Empty:
                if done.is_set():
                    return
                continue
            if item is None:
                return
            yield item

    start = time.monotonic()
    call = call_fn(requests(), metadata=metadata)
    timer = threading.Timer(deadline_s, call.cancel)
    timer.start()
    try:
        for reply in call:
            kind = reply.WhichOneof("kind")
            if kind == "welcome":
                out.welcomed = True
            elif kind == "ack":
                out.acks += 1
                unanswered = {seq for seq in unanswered if seq > reply.ack.acked_sequence}
            elif kind == "error":
                name = pb.ErrorCode.Name(reply.error.code)
                out.packet_errors[name] = out.packet_errors.get(name, 0) + 1
                unanswered.discard(reply.error.sequence)
            if out.welcomed and not unanswered:
                break  # every packet answered: end the case
        else:
            out.code = call.code()
    except grpc.RpcError as exc:
        code = exc.code()
        out.code = None if (code == grpc.StatusCode.CANCELLED and not timer.is_alive()) else code
    finally:
        timer.cancel()
        done.set()
        outbox.put(None)
        call.cancel()
    out.seconds = time.monotonic() - start
    out.unanswered = len(unanswered)
    return out
