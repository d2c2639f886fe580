"""The fusion server over a real loopback gRPC server, tiny model on CPU, with the minimal test client."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import cv2
import grpc
import numpy as np
import pytest

from mvic.fusion_server.acks import JOURNAL_NAME
from mvic.fusion_server.sinks import FrameSinks
from mvic.shared.bitstream import unpack
from mvic.shared.codec.registry import load_model
from mvic.shared.codec.view_fusion import NO_FUSION
from mvic.shared.rpc import mvic_pb2 as pb
from mvic.shared.scene import SceneConfig, write_scene
from tests.fusion_server.conftest import CAMERAS
from tests.fusion_server.harness import MiniNode, ServerThread, server_config


@pytest.fixture
def server(tmp_path, weights):
    srv = ServerThread(server_config(tmp_path / "out", weights)).start()
    yield srv
    srv.stop()


def _metric(srv: ServerThread, name: str, **labels) -> float:
    return srv.app.registry.get_sample_value(name, labels) or 0.0


def _pngs(out, camera) -> list[str]:
    return sorted(p.name for p in (out / camera).glob("*.png"))


def test_three_cameras_every_frame_written_once_and_acked_after_write(server, encoder, views, tmp_path):
    out = tmp_path / "out"
    nodes = {cam: MiniNode(server.port, cam, encoder) for cam in CAMERAS}
    for node in nodes.values():
        welcome = node.welcome()
        assert (welcome.acked_sequence, welcome.has_acked, welcome.max_packet_bytes) == (0, False, 4096)
    for i in range(6):
        for cam, node in nodes.items():
            node.send(*_packet(views[cam][i]))
    for cam, node in nodes.items():
        assert node.wait_acked(6), f"{cam} acked only {node.acked}"
        assert _pngs(out, cam) == [f"{s:010d}.png" for s in range(1, 7)]
        assert not node.packet_errors
    journal = json.loads((out / JOURNAL_NAME).read_text())
    assert journal["cameras"] == {cam: 6 for cam in CAMERAS}
    for cam in CAMERAS:
        assert _metric(server, "mvic_server_frames_written_total", camera=cam) == 6
    assert _metric(server, "mvic_server_groups_decoded_total", outcome="complete") == 6  # joint groups of 3
    for node in nodes.values():
        node.close()


def test_decode_entropy_threads_reach_the_decoder(tmp_path, weights, encoder, views):
    """``decode.entropy_threads`` shares each group's entropy decoding among that many threads; frames as ever."""
    out = tmp_path / "out"
    seen = []

    def loader(device):
        model = load_model(weights, device=device)
        entropy_decode = model.entropy_decode
        model.entropy_decode = lambda group, *a, threads=1, **kw: (seen.append(threads),
                                                                    entropy_decode(group, *a, threads=threads, **kw))[1]
        return model

    base = server_config(out, weights)
    config = server_config(out, weights, decode=replace(base.decode, entropy_threads=3))
    srv = ServerThread(config, model_loader=loader).start()
    try:
        nodes = _send_rounds(srv, encoder, views, 2)
        for cam, node in nodes.items():
            assert node.wait_acked(2), f"{cam} acked only {node.acked}"
            assert _pngs(out, cam) == [f"{s:010d}.png" for s in (1, 2)]
        assert seen and set(seen) == {3}
        for node in nodes.values():
            node.close()
    finally:
        srv.stop()


def test_the_rig_reaches_the_fusion_by_camera_id(tmp_path, weights, encoder, views, fusion_grounds):
    """``decode.rig``: the fusion of each view set gets each calibrated camera's ground by the views' camera ids."""
    out = tmp_path / "out"
    write_scene(SceneConfig(seed=1, cameras=3, height=64, width=96), 0, tmp_path / "scene")
    seen = fusion_grounds
    base = server_config(out, weights)
    rig = str(tmp_path / "scene" / "rig.yaml")
    srv = ServerThread(server_config(out, weights, decode=replace(base.decode, rig=rig))).start()
    try:
        nodes = _send_rounds(srv, encoder, views, 2)
        for cam, node in nodes.items():
            assert node.wait_acked(2), f"{cam} acked only {node.acked}"
        assert seen and all(len(g) == 3 and all(h is not None for h in g) for g in seen)
        for node in nodes.values():
            node.close()
    finally:
        srv.stop()


def test_groups_ready_together_are_synthesized_in_one_batch(tmp_path, weights, encoder, views):
    """The device is held busy until every group is entropy-decoded: they then go in batches, same frames and acks."""
    out = tmp_path / "out"
    gate = threading.Event()

    def loader(device):
        model = load_model(weights, device=device)
        synthesize = model.synthesize
        model.synthesize = lambda batch, *precision: gate.wait(30) and synthesize(batch, *precision)
        return model

    # without the view fusion: batching moves the network's output by at most a grey level, and optical flow can
    # carry such a difference further (the fusion itself is compared with decompress in the other tests)
    config = server_config(out, weights)
    srv = ServerThread(replace(config, decode=replace(config.decode, fusion=False)), model_loader=loader).start()
    try:
        nodes = _send_rounds(srv, encoder, views, 6)
        _wait_until(lambda: _metric(srv, "mvic_server_decode_seconds_count", stage="entropy") == 6,
                    "every view set to be entropy-decoded")
        gate.set()
        for cam, node in nodes.items():
            assert node.wait_acked(6), f"{cam} acked only {node.acked}"
            assert not node.packet_errors
        batches = _metric(srv, "mvic_server_decode_batch_groups_count")
        assert _metric(srv, "mvic_server_decode_batch_groups_sum") == 6
        assert _metric(srv, "mvic_server_decode_batch_groups_bucket", le="1.0") < batches < 6  # some batch > 1
        assert json.loads((out / JOURNAL_NAME).read_text())["cameras"] == {cam: 6 for cam in CAMERAS}
        for i in range(6):
            expected = encoder.decompress([unpack(views[cam][i][2]) for cam in CAMERAS], fusion=NO_FUSION)
            for cam, ref in zip(CAMERAS, expected):
                png = cv2.cvtColor(cv2.imread(str(out / cam / f"{i + 1:010d}.png")), cv2.COLOR_BGR2RGB)
                assert np.abs(png.astype(np.int16) - ref.image).max() <= 1  # batching: at most one level
        for node in nodes.values():
            node.close()
    finally:
        gate.set()
        srv.stop()


def test_ack_never_precedes_the_written_file(tmp_path, weights, encoder, views):
    out = tmp_path / "out"
    srv = ServerThread(server_config(out, weights)).start()
    try:
        node = MiniNode(srv.port, "C1", encoder)
        node.welcome()
        seen = []
        for i in range(6):
            node.send(*_packet(views["C1"][i]))
        deadline = time.time() + 20
        while node.acked < 6 and time.time() < deadline:
            msg = node.messages.get(timeout=20)
            if msg.HasField("ack"):
                acked = msg.ack.acked_sequence
                seen.append(acked)
                assert all((out / "C1" / f"{s:010d}.png").is_file() for s in range(1, acked + 1))
                assert json.loads((out / JOURNAL_NAME).read_text())["cameras"]["C1"] >= acked
        assert seen and seen[-1] == 6
        node.close()
    finally:
        srv.stop()


def test_a_failed_write_is_not_acked_and_its_resend_is_written(tmp_path, weights, encoder, views, monkeypatch):
    """Issue 13, defect 4: a failed sink write (disk full) used to leave the frame in flight for good: its resend was
    dropped as a duplicate and no later frame was ever acked. Now the camera's stream ends with UNAVAILABLE, nothing
    is acked, and the resend after the reconnect is decoded, written and acked."""
    write = FrameSinks.write
    failures = []

    def full_once(self, frames):
        if not failures:
            failures.append([f.source.sequence for f in frames])
            raise OSError(28, "No space left on device")
        write(self, frames)

    monkeypatch.setattr(FrameSinks, "write", full_once)
    out = tmp_path / "out"
    srv = ServerThread(server_config(out, weights)).start()
    try:
        node = MiniNode(srv.port, "C1", encoder)
        node.welcome()
        node.send(*_packet(views["C1"][0]))
        err = node.refused()
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "resend" in err.details(), err.details()
        assert failures == [[1]] and node.acked == 0 and not (out / JOURNAL_NAME).exists()
        node.close()
        again = MiniNode(srv.port, "C1", encoder)
        assert again.welcome().acked_sequence == 0
        for i in range(3):  # the resend of 1, then 2 and 3
            again.send(*_packet(views["C1"][i]))
        assert again.wait_acked(3) and again.acked == 3, again.acked
        assert _pngs(out, "C1") == [f"{s:010d}.png" for s in (1, 2, 3)]
        assert json.loads((out / JOURNAL_NAME).read_text())["cameras"] == {"C1": 3}
        assert _metric(srv, "mvic_server_sink_errors_total") == 1
        assert _metric(srv, "mvic_server_frames_written_total", camera="C1") == 3
        assert _metric(srv, "mvic_server_duplicates_dropped_total", camera="C1") == 0
        again.close()
    finally:
        srv.stop()


def test_a_rejected_packet_moves_no_ack(server, encoder, views, tmp_path):
    """Issue 13, defect 3: a garbage packet numbered 2^64-1 was rejected MALFORMED and then acknowledged, so the
    camera's ack jumped to 2^64-1 (in acks.json too) and every later real frame was acked as a duplicate, never
    decoded. A rejected packet now leaves no trace but the PacketError and a counter."""
    out = tmp_path / "out"
    c1 = MiniNode(server.port, "C1", encoder)
    c1.welcome()
    c1.send(2**64 - 1, b"\0garbage, not a bitstream", views["C1"][0][1])
    (err,) = c1.wait_errors(1)
    assert (err.sequence, err.code) == (2**64 - 1, pb.ERROR_CODE_MALFORMED)
    for i in range(3):
        c1.send(*_packet(views["C1"][i]))
    assert c1.wait_acked(3) and c1.acked == 3, c1.acked
    assert _pngs(out, "C1") == [f"{s:010d}.png" for s in (1, 2, 3)]
    assert json.loads((out / JOURNAL_NAME).read_text())["cameras"] == {"C1": 3}
    assert _metric(server, "mvic_server_duplicates_dropped_total", camera="C1") == 0
    c1.close()


def test_cameras_that_delivered_nothing_decodable_hold_no_slot(tmp_path, weights, encoder, views):
    """Issue 13, defect 5: a Hello alone (then garbage packets) used to take one of max_cameras for the server's life
    and put its camera id in acks.json; now only a camera with a decodable frame holds a slot."""
    out = tmp_path / "out"
    srv = ServerThread(server_config(out, weights, max_cameras=2)).start()
    try:
        for bogus in ("X1", "X2"):
            probe = MiniNode(srv.port, bogus, encoder)
            probe.welcome()
            probe.send(7, b"\0garbage", 0)
            assert [e.code for e in probe.wait_errors(1)] == [pb.ERROR_CODE_MALFORMED]
            probe.close()
        nodes = [MiniNode(srv.port, cam, encoder) for cam in ("C1", "C2")]
        for node in nodes:
            node.welcome()
            node.send(*_packet(views[node.camera][0]))
        assert all(node.wait_acked(1) for node in nodes)
        late = MiniNode(srv.port, "C3", encoder)  # C1 and C2 hold the two slots now
        assert late.refused().code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        late.close()
        assert json.loads((out / JOURNAL_NAME).read_text())["cameras"] == {"C1": 1, "C2": 1}
        for node in nodes:
            node.close()
    finally:
        srv.stop()


def test_malformed_and_oversized_packets_are_rejected_alone(server, encoder, views, tmp_path):
    c1, c2 = MiniNode(server.port, "C1", encoder), MiniNode(server.port, "C2", encoder)
    c1.welcome(), c2.welcome()
    seq1, cap1, bits1 = views["C1"][0]
    damaged = bits1[:40] + bytes([bits1[40] ^ 0xFF]) + bits1[41:]
    c1.send(1, damaged, cap1)  # CRC mismatch
    c1.send(2, b"not an mvic packet at all", views["C1"][1][1])
    c1.send(3, b"\0" * 5000, views["C1"][2][1])  # over max_packet_bytes (4096)
    c1.send(*_packet(views["C1"][3]))
    for i in range(4):
        c2.send(*_packet(views["C2"][i]))
    errors = c1.wait_errors(3)
    assert [(e.sequence, e.code) for e in errors] == [
        (1, pb.ERROR_CODE_MALFORMED), (2, pb.ERROR_CODE_MALFORMED), (3, pb.ERROR_CODE_TOO_LARGE)]
    assert "resend" in errors[0].message and "max_packet_bytes" in errors[2].message
    assert c1.wait_acked(4) and c2.wait_acked(4), (c1.acked, c2.acked)  # the ack passes rejected packets
    assert _pngs(tmp_path / "out", "C1") == ["0000000004.png"]
    assert len(_pngs(tmp_path / "out", "C2")) == 4
    assert c1.error is None and c2.error is None  # both streams go on
    assert _metric(server, "mvic_server_packets_rejected_total", camera="C1", reason="malformed") == 2
    assert _metric(server, "mvic_server_packets_rejected_total", camera="C1", reason="too_large") == 1
    c1.close(), c2.close()


def test_header_disagreeing_with_packet_is_malformed(server, encoder, views):
    c1 = MiniNode(server.port, "C1", encoder)
    c1.welcome()
    _, cap, bits = views["C2"][0]  # C2's bitstream on C1's stream
    c1.send(1, bits, cap)
    (err,) = c1.wait_errors(1)
    assert err.code == pb.ERROR_CODE_MALFORMED and "camera id" in err.message
    c1.close()


def test_message_over_grpc_limit_ends_stream_with_resource_exhausted(server, encoder):
    node = MiniNode(server.port, "C1", encoder)
    node.welcome()
    node.send(1, b"\0" * (200 << 10), 0)  # over max_packet_bytes + framing overhead
    assert node.refused().code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    node.close()


@pytest.mark.parametrize("change, code, words", [
    ({"model_id": 0xF002}, grpc.StatusCode.FAILED_PRECONDITION, "--model test-tiny-fast"),
    ({"weights_hash": b"\1" * 8}, grpc.StatusCode.FAILED_PRECONDITION, "same weights"),
    ({"format_version": 9}, grpc.StatusCode.FAILED_PRECONDITION, "upgrade MVIC on the server"),
    ({"metadata_camera": "C9"}, grpc.StatusCode.INVALID_ARGUMENT, "mvic-camera"),
    ({"first": pb.NodeMessage(packet=pb.ViewPacket(sequence=1))}, grpc.StatusCode.INVALID_ARGUMENT, "Hello"),
])
def test_handshake_refusals(server, encoder, change, code, words):
    node = MiniNode(server.port, "C1", encoder, **change)
    err = node.refused()
    assert err.code() == code and words in err.details(), err.details()
    node.close()


def test_unknown_camera_is_permission_denied(tmp_path, weights, encoder):
    srv = ServerThread(server_config(tmp_path / "out", weights, cameras=("C1", "C2"))).start()
    try:
        node = MiniNode(srv.port, "C7", encoder)
        err = node.refused()
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "C7" in err.details()
        node.close()
        ok = MiniNode(srv.port, "C2", encoder)
        ok.welcome()
        ok.close()
    finally:
        srv.stop()


def test_missing_camera_groups_decode_after_timeout(server, encoder, views, tmp_path):
    c1, c2 = MiniNode(server.port, "C1", encoder), MiniNode(server.port, "C2", encoder)
    c1.welcome(), c2.welcome()  # C2 connected but silent
    start = time.monotonic()
    c1.send(*_packet(views["C1"][0]))
    assert c1.wait_acked(1)
    assert time.monotonic() - start >= 0.25  # waited for C2 (max_wait 300 ms)
    assert _metric(server, "mvic_server_groups_decoded_total", outcome="partial") == 1
    assert _pngs(tmp_path / "out", "C1") == ["0000000001.png"]
    c1.close(), c2.close()


def test_restart_resumes_from_journal_without_duplicates(tmp_path, weights, encoder, views):
    out = tmp_path / "out"
    srv = ServerThread(server_config(out, weights)).start()
    node = MiniNode(srv.port, "C1", encoder)
    node.welcome()
    for i in range(3):
        node.send(*_packet(views["C1"][i]))
    assert node.wait_acked(3)
    srv.stop()  # drains, then ends the stream with UNAVAILABLE so the node reconnects
    assert node.refused().code() == grpc.StatusCode.UNAVAILABLE
    node.close()

    srv = ServerThread(server_config(out, weights)).start()
    try:
        node = MiniNode(srv.port, "C1", encoder)
        welcome = node.welcome()
        assert (welcome.acked_sequence, welcome.has_acked) == (3, True)
        for i in range(1, 6):  # resends 2 and 3, as a node that missed the last acks would
            node.send(*_packet(views["C1"][i]))
        assert node.wait_acked(6)
        assert _metric(srv, "mvic_server_frames_written_total", camera="C1") == 3  # only 4, 5, 6 decoded
        assert _metric(srv, "mvic_server_duplicates_dropped_total", camera="C1") == 2
        assert _pngs(out, "C1") == [f"{s:010d}.png" for s in range(1, 7)]
        assert not node.packet_errors
        node.close()
    finally:
        srv.stop()


def test_shutdown_drains_open_view_sets_before_closing(tmp_path, weights, encoder, views):
    config = server_config(tmp_path / "out", weights)
    srv = ServerThread(replace(config, grouping=replace(config.grouping, max_wait_ms=30_000))).start()
    c1, c2 = MiniNode(srv.port, "C1", encoder), MiniNode(srv.port, "C2", encoder)
    c1.welcome(), c2.welcome()
    c1.send(*_packet(views["C1"][0]))  # waits for C2 for 30 s ...
    _wait_until(lambda: _metric(srv, "mvic_server_open_groups") == 1, "C1's view to wait in an open view set")
    assert c1.acked == 0
    srv.stop()  # ... unless the server drains
    assert c1.wait_acked(1)  # the ack was sent before the stream ended; the client's reader thread may lag
    assert c1.refused().code() == grpc.StatusCode.UNAVAILABLE
    c1.close(), c2.close()


def test_reconnect_replaces_the_old_stream(server, encoder, views):
    old = MiniNode(server.port, "C1", encoder)
    old.welcome()
    new = MiniNode(server.port, "C1", encoder)
    new.welcome()
    assert old.refused().code() == grpc.StatusCode.ABORTED
    new.send(*_packet(views["C1"][0]))
    assert new.wait_acked(1)
    old.close(), new.close()


def test_half_close_ends_stream_after_last_ack(server, encoder, views):
    node = MiniNode(server.port, "C1", encoder)
    node.welcome()
    for i in range(2):
        node.send(*_packet(views["C1"][i]))
    node.half_close()
    assert node.wait_end()
    assert node.acked == 2 and node.error is None


def _send_rounds(srv: ServerThread, encoder, views, rounds: int) -> dict[str, MiniNode]:
    """Every camera connected (welcomed), then ``rounds`` frames sent, one of each camera per round."""
    nodes = {cam: MiniNode(srv.port, cam, encoder) for cam in CAMERAS}
    for node in nodes.values():
        node.welcome()
    for i in range(rounds):
        for cam, node in nodes.items():
            node.send(*_packet(views[cam][i]))
    return nodes


def _packet(item):
    seq, capture_ns, bits = item
    return seq, bits, capture_ns


def _wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.02)


def test_after_restart_backlogs_of_cameras_reconnecting_apart_still_decode_jointly(tmp_path, weights, encoder, views):
    out = tmp_path / "out"
    srv = ServerThread(server_config(out, weights)).start()
    nodes = [MiniNode(srv.port, cam, encoder) for cam in ("C1", "C2")]
    for node in nodes:
        node.welcome()
        node.send(*_packet(views[node.camera][0]))
    assert all(node.wait_acked(1) for node in nodes)
    srv.stop()
    for node in nodes:
        node.close()

    srv = ServerThread(server_config(out, weights)).start()  # away_wait_ms 5000: both cameras are awaited
    try:
        c1 = MiniNode(srv.port, "C1", encoder)
        assert c1.welcome().acked_sequence == 1
        for i in (1, 2):
            c1.send(*_packet(views["C1"][i]))
        # C1's backlog waits for C2 (the away grace of the journal's cameras; past max_wait: test_core, with a clock)
        _wait_until(lambda: _metric(srv, "mvic_server_open_groups") == 2, "C1's backlog to wait for C2")
        c2 = MiniNode(srv.port, "C2", encoder)
        c2.welcome()
        for i in (1, 2):
            c2.send(*_packet(views["C2"][i]))
        assert c1.wait_acked(3) and c2.wait_acked(3)
        assert _metric(srv, "mvic_server_groups_decoded_total", outcome="complete") == 2
        assert _metric(srv, "mvic_server_groups_decoded_total", outcome="partial") == 0
        c1.close(), c2.close()
    finally:
        srv.stop()
