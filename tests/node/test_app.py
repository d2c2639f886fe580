"""The whole node (capture -> encode -> spool -> send) with a tiny model against the fake server."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from mvic.node.app import NodeApp
from mvic.node.cli import main
from mvic.node.config import load_config
from mvic.shared.bitstream import unpack
from mvic.shared.codec.registry import load_model
from mvic.shared.scene import Scene, SceneConfig
from tests.node.fakes import FakeServer, wait_for

ROOT = Path(__file__).resolve().parents[2]
START = 1_700_000_000_000_000_000


def node_config(tmp_path, server: str, weights: Path, **overrides):
    base = {"camera": "C2", "server": server, "source.fps": 50.0, "source.start_at_ns": START,
            "source.synthetic.cameras": 3, "source.synthetic.height": 64, "source.synthetic.width": 64,
            "encode.weights": str(weights), "encode.policy": "every", "spool.dir": str(tmp_path / "spool"),
            "link.backoff_initial_s": 0.05, "link.backoff_max_s": 0.2, "link.finish_timeout_s": 20.0}
    return load_config(None, {**base, **overrides})


@pytest.fixture(scope="module")
def weights(tiny_weights) -> Path:
    return tiny_weights["test-tiny-fast"]


def test_frames_arrive_once_decodable_and_stamped_on_schedule(tmp_path, weights):
    model = load_model(weights)
    server = FakeServer(expect_model=(model.spec.model_id, model.weights_hash)).start()
    try:
        app = NodeApp(node_config(tmp_path, server.target, weights, **{"source.frames": 3}))
        assert app.run() == 0
        stored = server.store.packets["C2"]
        assert sorted(stored) == [1, 2, 3]
        views = [unpack(stored[s].bitstream) for s in (1, 2, 3)]
        assert [v.header.capture_ns for v in views] == [START + i * 20_000_000 for i in range(3)]
        assert all(v.header.camera_id == "C2" and v.header.rate_index == 2 for v in views)
        decoded = model.decompress(views[:1])[0].image  # a view decodes alone, to the scene's C2 view
        truth = Scene(SceneConfig(seed=0, cameras=3, height=64, width=64)).render_view(0, 1)
        assert decoded.shape == truth.shape
        assert app.metrics.value("mvic_node_frames_encoded_total") == 3
        assert app.metrics.value("mvic_node_encode_seconds_count") == 3

        # node restart on the same schedule: capture resumes at frame 3 (not frame 0 with old timestamps), the
        # numbering continues after the acked sequences, and --frames 5 ends the schedule at frame 5
        again = NodeApp(node_config(tmp_path, server.target, weights, **{"source.frames": 5}))
        assert again.run() == 0
        assert again.capture.captured == 2
        assert sorted(stored) == [1, 2, 3, 4, 5]
        times = [unpack(stored[s].bitstream).header.capture_ns for s in (1, 2, 3, 4, 5)]
        assert times == [START + i * 20_000_000 for i in range(5)]

        # a third start on the finished schedule captures nothing; a new --start-at starts at frame 0 again
        done = NodeApp(node_config(tmp_path, server.target, weights, **{"source.frames": 5}))
        assert done.run() == 0 and done.capture.captured == 0 and sorted(stored) == [1, 2, 3, 4, 5]
        fresh = NodeApp(node_config(tmp_path, server.target, weights, **{"source.frames": 1,
                                                                         "source.start_at_ns": START + 10**9}))
        assert fresh.run() == 0
        assert unpack(stored[6].bitstream).header.capture_ns == START + 10**9
    finally:
        server.stop()


def test_node_restart_with_the_server_down_resends_its_spool(tmp_path, weights):
    server = FakeServer().start()
    port = server.port
    server.stop()
    cfg = node_config(tmp_path, f"127.0.0.1:{port}", weights, **{"source.frames": 3, "link.finish_timeout_s": 0.3})
    first = NodeApp(cfg)
    assert first.run() == 1  # nothing acknowledged: the packets stay spooled
    assert first.spool.pending == 3
    server.start()
    try:
        second = NodeApp(node_config(tmp_path, server.target, weights, **{"source.frames": 4}))
        assert second.run() == 0
        assert sorted(server.store.packets["C2"]) == [1, 2, 3, 4]
        frame_times = [server.store.packets["C2"][s].capture_ns for s in (1, 2, 3, 4)]
        assert frame_times == [START + i * 20_000_000 for i in range(4)]  # the schedule resumed at frame 3
    finally:
        server.stop()


def test_latest_policy_drops_frames_a_slow_encoder_cannot_take(tmp_path, weights):
    server = FakeServer().start()
    try:
        model = load_model(weights)
        slow = threading.Event()
        original = model.compress_view

        def slow_compress(*args, **kwargs):
            slow.wait(0.1)  # 10 frames/s encoder behind a 50 frames/s schedule
            return original(*args, **kwargs)

        model.compress_view = slow_compress
        cfg = node_config(tmp_path, server.target, weights, **{"source.frames": 10, "encode.policy": "latest",
                                                               "source.start_at_ns": time.time_ns()})
        app = NodeApp(cfg, model=model)
        assert app.run() == 0
        encoded = app.metrics.value("mvic_node_frames_encoded_total")
        dropped = app.metrics.dropped_count("latest_policy")
        assert encoded + dropped == 10 and dropped >= 3
        assert len(server.store.packets["C2"]) == encoded
    finally:
        server.stop()


def test_cli_main_runs_a_node(tmp_path, weights):
    server = FakeServer().start()
    try:
        code = main(["--camera", "C1", "--server", server.target, "--weights", str(weights), "--frames", "2",
                     "--fps", "0", "--spool", str(tmp_path / "spool"), "--policy", "every", "--config",
                     str(_tiny_yaml(tmp_path))])
        assert code == 0
        assert sorted(server.store.packets["C1"]) == [1, 2]
    finally:
        server.stop()


def test_cli_reports_missing_weights_as_startup_error(tmp_path, capsys, no_installed_weights):
    code = main(["--camera", "C1", "--server", "127.0.0.1:1", "--spool", str(tmp_path / "spool"),
                 "--config", str(_tiny_yaml(tmp_path))])
    assert code == 2  # no trained weights installed for ldmic-fast-lite; the message says to pass --weights


def _tiny_yaml(tmp_path) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text("source:\n  synthetic: {cameras: 3, height: 64, width: 64}\n"
                    "link: {backoff_initial_s: 0.05, backoff_max_s: 0.2}\n")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_stops_gracefully_and_flushes(tmp_path, weights):
    server = FakeServer().start()
    config = _tiny_yaml(tmp_path)
    config.write_text(config.read_text() + "metrics: {host: 127.0.0.1}\n")
    port = _free_port()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-m", "mvic.node.cli", "--camera", "C3", "--server", server.target,
             "--weights", str(weights), "--fps", "5", "--spool", str(tmp_path / "spool"), "--config", str(config),
             "--metrics-port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        try:
            assert wait_for(lambda: len(server.store.packets.get("C3", {})) >= 2, timeout=60)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                exposition = response.read().decode()
            assert 'mvic_node_connection_state{camera="C3",state="connected"} 1.0' in exposition
            assert "mvic_node_packets_acked_total" in exposition
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, out
        assert "SIGTERM received" in out and "stopped:" in out
        stored = server.store.packets["C3"]
        assert sorted(stored) == list(range(1, len(stored) + 1))
        leftover = list((tmp_path / "spool" / "C3").glob("*.mvic"))
        assert not leftover  # everything encoded before the stop was sent and acked within the drain time
    finally:
        server.stop()
