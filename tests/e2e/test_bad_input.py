"""Bad input over the wire: a raw client (``mvic.shared.rpc`` stubs only) sends what a real node never would, while a
real node streams to the same server; the bad packets are refused alone and everything else goes on."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from mvic.shared.bitstream import FORMAT_VERSION, pack
from mvic.shared.codec.registry import load_model
from mvic.shared.rpc import CAMERA_METADATA_KEY, GROUP_METADATA_KEY, MESSAGE_OVERHEAD_BYTES, mvic_pb2 as pb
from tests.e2e.harness import MODEL, RawCamera, capture_times, journal, png_names, spooled

FRAMES = 6
MAX_PACKET = 8192  # server max_packet_bytes: a tiny-model view of 64x96 is well under 1 KiB
PROBE = "P1"  # the raw client's camera, in its own camera group so the real node's groups never wait for it


@pytest.fixture(scope="module")
def codec(tiny_weights):
    return load_model(tiny_weights[MODEL])


def _hello(codec, camera: str, group: str = "probe", weights_hash: bytes | None = None) -> pb.Hello:
    return pb.Hello(camera_id=camera, group_id=group, model_id=codec.spec.model_id,
                    weights_hash=codec.weights_hash if weights_hash is None else weights_hash,
                    format_version=FORMAT_VERSION, node_version="e2e-raw", session_ns=time.time_ns())


def _raw(cluster, codec, camera=PROBE, **kw) -> RawCamera:
    hello = _hello(codec, camera, **kw)
    return RawCamera(cluster.target, hello,
                     metadata=((CAMERA_METADATA_KEY, hello.camera_id), (GROUP_METADATA_KEY, hello.group_id)))


def _refusal(cam: RawCamera) -> grpc.RpcError:
    end = cam.next()
    assert isinstance(end, grpc.RpcError), f"expected the stream to be refused, got {end!r}"
    return end


def test_malformed_packets_are_refused_alone(cluster, codec):
    server = cluster.start_server(cameras=("C1", "C2", "C3", PROBE), max_packet_bytes=MAX_PACKET)
    start_at = time.time_ns() + 4_000_000_000
    cluster.start_node("C1", start_at_ns=start_at, frames=FRAMES)  # C2, C3 never come: C1 is decoded alone
    cluster.wait_server_ready()

    # refused at the handshake, each with its status; nothing is left behind at the server
    for kw, camera, code in (({"weights_hash": b"\x00" * 8}, "C2", grpc.StatusCode.FAILED_PRECONDITION),
                             ({}, "C99", grpc.StatusCode.PERMISSION_DENIED)):
        cam = _raw(cluster, codec, camera, **kw)
        try:
            end = _refusal(cam)
            assert end.code() == code, end
            assert end.details(), "a refusal must say what to do"
        finally:
            cam.close()

    cam = _raw(cluster, codec)
    try:
        welcome = cam.next()
        assert welcome.WhichOneof("kind") == "welcome", welcome
        assert welcome.welcome.max_packet_bytes == MAX_PACKET
        image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
        t0 = time.time_ns()
        good = pack(codec.compress_view(image, 2, camera_id=PROBE, sequence=4, capture_ns=t0 + 4))
        truncated = pack(codec.compress_view(image, 2, camera_id=PROBE, sequence=2, capture_ns=t0 + 2))
        cam.send_packet(2**64 - 1, t0, b"\x00garbage" * 3)  # refused; it must not move the ack (issue 13)
        cam.send_packet(1, t0 + 1, b"\x00garbage, not a bitstream" * 3)
        cam.send_packet(2, t0 + 2, truncated[: len(truncated) // 2])
        cam.send_packet(3, t0 + 3, b"\x01" * (MAX_PACKET + 1))
        cam.send_packet(4, t0 + 4, good)  # the stream is still open: this one is decoded and acked
        errors, acked = {}, 0
        deadline = time.monotonic() + 60
        while acked < 4:
            assert time.monotonic() < deadline, f"no ack of packet 4 within 60 s; errors {errors}\n{cluster.logs()}"
            message = cam.next()
            assert isinstance(message, pb.ServerMessage), f"the stream ended: {message!r}\n{cluster.logs()}"
            if message.WhichOneof("kind") == "error":
                errors[message.error.sequence] = message.error.code
                assert message.error.message
            elif message.WhichOneof("kind") == "ack":
                acked = max(acked, message.ack.acked_sequence)
        assert errors == {2**64 - 1: pb.ERROR_CODE_MALFORMED, 1: pb.ERROR_CODE_MALFORMED, 2: pb.ERROR_CODE_MALFORMED,
                          3: pb.ERROR_CODE_TOO_LARGE}
        assert acked == 4 and png_names(cluster.out, PROBE) == [t0 + 4]

        # a message over the gRPC limit ends that stream with RESOURCE_EXHAUSTED (the server stays up)
        cam.send_packet(5, t0 + 5, b"\x02" * (MAX_PACKET + MESSAGE_OVERHEAD_BYTES + 1))
        end = cam.next()
        assert isinstance(end, grpc.RpcError) and end.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, end
    finally:
        cam.close()

    assert cluster.wait_nodes_done(["C1"]) == {"C1": 0}, cluster.logs()
    assert png_names(cluster.out, "C1") == sorted(capture_times(start_at, FRAMES)), cluster.logs()
    assert spooled(cluster.spool, "C1") == []
    assert server.alive
    stats = cluster.server_stats()
    assert stats['mvic_server_packets_rejected_total{camera="P1",reason="malformed"}'] == 3
    assert journal(cluster.out) == {"C1": FRAMES, PROBE: 4}  # refused cameras and packets leave no ack behind
    assert stats['mvic_server_packets_rejected_total{camera="P1",reason="too_large"}'] == 1
    assert stats.get('mvic_server_packets_rejected_total{camera="C1",reason="malformed"}', 0.0) == 0
    assert stats['mvic_server_frames_written_total'] == FRAMES + 1
    assert stats['mvic_server_streams_refused_total{code="FAILED_PRECONDITION"}'] == 1
    assert stats['mvic_server_streams_refused_total{code="PERMISSION_DENIED"}'] == 1
