"""Test doubles for the node: a scripted frame source, a video file whose frames show their own number, and a tiny
in-process fusion server on loopback.

The fake server speaks mvic.v1 through the generated stubs only (never mvic.fusion_server): it answers a Hello with a
Welcome carrying the highest sequence it "stored" for the camera, stores each ViewPacket, acks it cumulatively, and
can be told to refuse cameras, reject given sequences, or lose packets (ack=False: they arrive but are never
stored or acked, as when a server dies before writing them). Its ``Store`` outlives a server restart,
like a server's output folder does. A misbehaving server (issue 13) is told what to claim: ``welcome_acked`` (a
Welcome "stored up to N" whatever it holds), ``ack_ahead`` (each Ack that many sequences above the packet it
acknowledges), ``reject_ahead`` (a PacketError for the sequence that many above each packet received).
"""

from __future__ import annotations

import time
from concurrent import futures
from dataclasses import dataclass, field

import cv2
import grpc
import numpy as np

from mvic.shared.rpc import mvic_pb2 as pb
from mvic.shared.rpc.mvic_pb2_grpc import FusionServicer, add_FusionServicer_to_server


class ScriptedSource:
    """A finite or live source whose reads follow a script: 'ok', 'hang' (sleeps), 'error' (raises), 'end'."""

    def __init__(self, script: list[str], *, live: bool = False, hang_s: float = 2.0, shape=(16, 16, 3)):
        self.script = list(script)
        self.live = live
        self.hang_s = hang_s
        self.shape = shape
        self.name = "scripted"
        self.opens = 0
        self.closes = 0
        self.reads = 0
        self.seeks: list[int] = []

    def open(self) -> None:
        self.opens += 1

    def read(self):
        step = self.script.pop(0) if self.script else "end"
        self.reads += 1
        if step == "hang":
            time.sleep(self.hang_s)
            return np.zeros(self.shape, np.uint8)
        if step == "error":
            raise OSError("device unplugged")
        if step == "end":
            return None
        return np.full(self.shape, self.reads % 256, np.uint8)

    def rewind(self) -> None:
        pass

    def seek(self, index: int) -> None:
        self.seeks.append(index)

    def close(self) -> None:
        self.closes += 1


BITS, BLOCK = 8, 16  # write_indexed_video: frame k shows k in binary, 8 blocks of 16 px, white = 1


def write_indexed_video(path, n: int, fps: float, fourcc: str) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (BITS * BLOCK, BLOCK))
    assert writer.isOpened()
    for k in range(n):
        image = np.zeros((BLOCK, BITS * BLOCK, 3), np.uint8)
        for bit in range(BITS):
            if k >> bit & 1:
                image[:, bit * BLOCK:(bit + 1) * BLOCK] = 255
        writer.write(image)
    writer.release()


def frame_number(image: np.ndarray) -> int:
    blocks = image.reshape(BLOCK, BITS, BLOCK, 3).mean(axis=(0, 2, 3))  # (BITS,) mean of each block
    return sum(1 << bit for bit in range(BITS) if blocks[bit] > 127)


@dataclass
class Store:
    """What the fake server has durably stored, per camera; survives server restarts."""

    packets: dict[str, dict[int, pb.ViewPacket]] = field(default_factory=dict)
    received: list[tuple[str, int]] = field(default_factory=list)  # every (camera, sequence) that arrived
    hellos: list[pb.Hello] = field(default_factory=list)
    hello_times: list[float] = field(default_factory=list)  # time.monotonic() of each Hello
    metadata: list[dict[str, str]] = field(default_factory=list)
    client_certs: list[bytes] = field(default_factory=list)  # PEM client certificate of each stream (TLS), b"" if none

    def acked(self, camera: str) -> int:
        return max(self.packets.get(camera) or {0: None})


class FakeFusion(FusionServicer):
    def __init__(self, store: Store, *, refuse: tuple[grpc.StatusCode, str] | None = None,
                 reject: set[int] = frozenset(), ack: bool = True, max_packet_bytes: int = 1 << 20,
                 expect_model: tuple[int, bytes] | None = None, welcome_acked: int | None = None,
                 ack_ahead: int = 0, reject_ahead: int = 0):
        self.store = store
        self.refuse = refuse
        self.reject = set(reject)
        self.ack = ack
        self.max_packet_bytes = max_packet_bytes
        self.expect_model = expect_model
        self.welcome_acked = welcome_acked
        self.ack_ahead = ack_ahead
        self.reject_ahead = reject_ahead

    def Stream(self, request_iterator, context):
        first = next(request_iterator)
        hello = first.hello
        self.store.hellos.append(hello)
        self.store.hello_times.append(time.monotonic())
        self.store.metadata.append(dict(context.invocation_metadata()))
        self.store.client_certs.append((context.auth_context().get("x509_pem_cert") or [b""])[0])
        if self.refuse:
            context.abort(*self.refuse)
        if self.expect_model and (hello.model_id, hello.weights_hash) != self.expect_model:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "model mismatch: upgrade the node")
        cam = hello.camera_id
        stored = self.store.packets.setdefault(cam, {})
        acked = self.store.acked(cam) if self.welcome_acked is None else self.welcome_acked
        yield pb.ServerMessage(welcome=pb.Welcome(acked_sequence=acked, has_acked=bool(stored) or bool(acked),
                                                  max_packet_bytes=self.max_packet_bytes, server_version="fake"))
        for message in request_iterator:
            packet = message.packet
            self.store.received.append((cam, packet.sequence))
            if not self.ack:
                continue
            if packet.sequence in self.reject:
                yield pb.ServerMessage(error=pb.PacketError(sequence=packet.sequence, code=pb.ERROR_CODE_MALFORMED,
                                                            message="bad packet (test)"))
                continue
            if packet.sequence <= max(stored, default=0):
                yield pb.ServerMessage(error=pb.PacketError(sequence=packet.sequence,
                                                            code=pb.ERROR_CODE_OUT_OF_ORDER, message="duplicate"))
                continue
            if self.reject_ahead:
                yield pb.ServerMessage(error=pb.PacketError(sequence=packet.sequence + self.reject_ahead,
                                                            code=pb.ERROR_CODE_MALFORMED, message="never sent"))
            stored[packet.sequence] = packet
            yield pb.ServerMessage(ack=pb.Ack(acked_sequence=packet.sequence + self.ack_ahead))


class FakeServer:
    """Start/stop/restart a FakeFusion on one loopback port."""

    def __init__(self, store: Store | None = None, port: int = 0, credentials: grpc.ServerCredentials | None = None,
                 **servicer_args):
        self.store = store or Store()
        self.servicer_args = servicer_args
        self.port = port
        self.credentials = credentials  # mutual TLS when given
        self._server: grpc.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, **servicer_args) -> FakeServer:
        self.servicer_args.update(servicer_args)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        add_FusionServicer_to_server(FakeFusion(self.store, **self.servicer_args), server)
        address = f"127.0.0.1:{self.port}"
        port = server.add_secure_port(address, self.credentials) if self.credentials else \
            server.add_insecure_port(address)
        assert port, f"cannot bind 127.0.0.1:{self.port}"
        self.port = port
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait()
            self._server = None


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
