"""Health checking, the live page (HTTP, optionally headless Chromium) and the Prometheus endpoint."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mvic.shared.codec.registry import load_model
from mvic.shared.rpc import SERVICE_NAME
from tests.fusion_server.harness import MiniNode, ServerThread, server_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_health_is_not_serving_until_the_model_is_loaded(tmp_path, weights):
    gate = threading.Event()

    def slow_loader(device):
        assert gate.wait(20)
        return load_model(weights, device=device)

    srv = ServerThread(server_config(tmp_path / "out", weights), model_loader=slow_loader).start(wait_loaded=False)
    try:
        deadline = time.monotonic() + 30
        while not srv.port:
            assert time.monotonic() < deadline, "the gRPC port was not bound within 30 s"
            time.sleep(0.02)
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest
            assert stub.Check(check(service=SERVICE_NAME), wait_for_ready=True).status == \
                health_pb2.HealthCheckResponse.NOT_SERVING
            gate.set()
            for status in stub.Watch(check(service=SERVICE_NAME)):
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            assert stub.Check(check(service="")).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        gate.set()
        srv.stop()


@pytest.fixture
def live_server(tmp_path, weights, encoder, views):
    """A server with the live page and metrics endpoint that has decoded 3 frames of C1 and C2."""
    http_port, metrics_port = _free_port(), _free_port()
    config = replace(server_config(tmp_path / "out", weights), http=f"127.0.0.1:{http_port}",
                     metrics_port=metrics_port)
    srv = ServerThread(config).start()
    nodes = [MiniNode(srv.port, cam, encoder) for cam in ("C1", "C2")]
    for node in nodes:
        node.welcome()
        for seq, capture, bits in views[node.camera][:3]:
            node.send(seq, bits, capture)
    assert all(node.wait_acked(3) for node in nodes)
    yield srv, f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}"
    for node in nodes:
        node.close()
    srv.stop()


def test_live_endpoints(live_server):
    _, base, metrics = live_server
    status, ctype, body = _get(base + "/")
    assert status == 200 and ctype.startswith("text/html") and b"/api/stats" in body
    status, ctype, body = _get(base + "/api/stats")
    stats = json.loads(body)
    assert stats["ready"] and [c["camera"] for c in stats["cameras"]] == ["C1", "C2"]
    c1 = stats["cameras"][0]
    assert c1["frames_decoded"] == 3 and c1["acked_sequence"] == 3 and c1["connected"]
    assert 0 < c1["bpp"] < 24 and c1["latency_s"] > 0 and (c1["width"], c1["height"]) == (96, 64)
    status, ctype, body = _get(base + "/cameras/C1.jpg")
    assert status == 200 and ctype == "image/jpeg" and body[:2] == b"\xff\xd8"
    jpeg = body
    with urllib.request.urlopen(urllib.request.Request(base + "/cameras/C1.jpg", method="HEAD"), timeout=10) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == len(jpeg) and r.read() == b""
    assert _get(base + "/cameras/C9.jpg")[0] == 404
    for escape in ("/cameras/../cameras/C1.jpg", "/cameras/..%2FC1.jpg", "/cameras/%2E%2E/C1.jpg", "/../etc/passwd"):
        assert _get(base + escape)[0] == 404, escape
    assert _get(base + "/healthz")[0] == 200
    status, _, body = _get(metrics + "/metrics")
    text = body.decode()
    assert 'mvic_server_frames_written_total{camera="C1"} 3.0' in text
    assert "mvic_server_decode_seconds_bucket" in text and "mvic_server_ack_latency_seconds_bucket" in text
    assert 'mvic_server_http_connections_dropped_total{reason="timeout"} 0.0' in text


def test_live_page_in_headless_chromium(live_server, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    _, base, _ = live_server
    run = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=4000", "--dump-dom", base + "/"],
        capture_output=True, text=True, timeout=60,
    )
    dom = run.stdout
    assert 'id="cam-C1"' in dom and 'id="cam-C2"' in dom, run.stderr[-2000:]
    assert 'src="/cameras/C1.jpg?t=' in dom and "serving" in dom


def test_a_cuda_fault_loses_no_frame_and_turns_health_not_serving(tmp_path, weights, encoder, views, monkeypatch):
    """A GPU server (its device simulated: the first model loaded plays the GPU's) whose synthesis hits a CUDA
    error: every frame is still decoded and acknowledged, none rejected; health says NOT_SERVING."""
    import torch

    from mvic.fusion_server import app as app_module

    monkeypatch.setattr(app_module, "resolve_device", lambda requested: "cuda:0")
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32  # a GPU server turns both off
    loaded = []

    def loader(device):
        model = load_model(weights)  # on the CPU, whatever the device
        if not loaded:
            def broken(batch, precision=None, fusion=None):
                raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered (injected)")
            model.synthesize = broken
        loaded.append(device)
        return model

    srv = ServerThread(server_config(tmp_path / "out", weights), model_loader=loader).start()
    nodes = [MiniNode(srv.port, cam, encoder) for cam in ("C1", "C2")]
    try:
        assert loaded == ["cuda:0", "cpu"]
        for node in nodes:
            node.welcome()
            for seq, capture, bits in views[node.camera][:3]:
                node.send(seq, bits, capture)
        assert all(node.wait_acked(3) for node in nodes)
        assert all(not node.packet_errors for node in nodes)
        assert len(list((tmp_path / "out").rglob("*.png"))) == 6
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert srv.app.registry.get_sample_value("mvic_server_device_faults_total") == 1
    finally:
        for node in nodes:
            node.close()
        srv.stop()
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
