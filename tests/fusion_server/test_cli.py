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
            else:
                pytest.fail(f"mvic-server did not serve within 60 s:\n{proc.stdout.read() if proc.poll() else ''}")
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


def test_a_damaged_ack_journal_is_one_line_saying_what_to_do(tmp_path, weights, caplog):
    """mvic-server with a damaged out/acks.json: no traceback, one error line naming the file and what to do."""
    from mvic.fusion_server.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "acks.json").write_text('{"version": 1, "cameras": {"C1": "seven"}}')
    with caplog.at_level("ERROR"):
        code = main(["--device", "cpu", "--model", "test-tiny-fast", "--weights", str(weights),
                     "--listen", "127.0.0.1:0", "--out", str(out)])
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert code != 0 and len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert str(out / "acks.json") in message and "move it away" in message and "\n" not in message
    assert errors[0].exc_info is None


@pytest.mark.parametrize("flag", ["--listen", "--metrics-port"])
def test_a_busy_port_is_one_line_naming_it_and_what_to_do(tmp_path, weights, caplog, flag):
    """Issue 13, defect 9: a --listen port held by another program was an uncaught RuntimeError traceback. Now
    mvic-server exits 2 (did not start) with one error line naming the port and the flag to change."""
    from mvic.fusion_server.cli import main
    from mvic.shared.config import EXIT_CONFIG

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        where = ["--listen", f"127.0.0.1:{port}"] if flag == "--listen" else ["--listen", "127.0.0.1:0",
                                                                            "--metrics-port", str(port)]
        with caplog.at_level("ERROR"):
            code = main(["--device", "cpu", "--model", "test-tiny-fast", "--weights", str(weights),
                         "--out", str(tmp_path / "out"), *where])
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert code == EXIT_CONFIG and len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert str(port) in message and flag in message and "\n" not in message, message
    assert errors[0].exc_info is None
