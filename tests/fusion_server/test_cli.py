"""mvic-server as a process: serves once the model is loaded, SIGTERM drains and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fusion_server.harness import MiniNode


@pytest.mark.slow  # a fresh interpreter imports torch: 10-20 s on a shared 2-core machine
def test_sigterm_drains_and_exits_zero(tmp_path, weights, encoder, views):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "mvic.fusion_server.cli", "--device", "cpu", "--model",
         "test-tiny-fast", "--weights", str(weights), "--listen", f"127.0.0.1:{port}", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        node = MiniNode(port, "C1", encoder)
        node.welcome()
        for seq, capture, bits in views["C1"][:2]:
            node.send(seq, bits, capture)
        assert node.wait_acked(2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert node.refused().code() == grpc.StatusCode.UNAVAILABLE
        node.close()
        log = proc.stdout.read()
        assert "loaded" in log and "stopped" in log, log
        assert sorted(p.name for p in (out / "C1").iterdir()) == ["0000000001.png", "0000000002.png"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
