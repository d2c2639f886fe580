"""Fuzz campaign against a running ``mvic-server`` process on loopback (issue 13).

    .venv/bin/python benchmarks/fuzz_server.py [--cases 10000] [--weights W] [--deadline 20]

Starts ``mvic-server`` (CPU, loopback, a temporary output folder) with the shipped weights, then runs hostile
sessions from ``tests/wirefuzz.py``: Hellos with any bytes in their ids and versions, malformed protobuf, packets
numbered 2**64-1 or captured at 2**63 ns, and the hostile bitstreams of ``tests/strategies.py``. After every case the
server must still run; every case must be answered by name (see ``Outcome.named``) within the deadline. The server's
RSS and open fds are sampled every 250 cases; at the end a well-behaved camera must still get its frames stored.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.*

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mvic.shared.bitstream import pack  # noqa: E402
from mvic.shared.codec.registry import default_weights, load_model  # noqa: E402
from mvic.shared.model_table import DEFAULT_MODEL  # noqa: E402
from mvic.shared.rpc import channel_options  # noqa: E402
from tests.strategies import hostile_packets  # noqa: E402
from tests.wirefuzz import hello_bytes, hostile_sessions, packet_bytes, run_session  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_sample(pid: int) -> tuple[float, int]:
    """(RSS MiB, open fds) of a process, from /proc."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None, help=f"weights file (default: the shipped {DEFAULT_MODEL})")
    ap.add_argument("--deadline", type=float, default=20.0, help="seconds a case may take before it is a hang")
    ap.add_argument("--max-pixels", type=int, default=256 * 256, help="largest declared size a packet may carry")
    args = ap.parse_args(argv)

    weights = Path(args.weights) if args.weights else default_weights(DEFAULT_MODEL).path
    model = load_model(weights)
    from tests.conftest import random_image

    rng = np.random.default_rng(args.seed)
    views = [model.compress_view(random_image(rng, h, w), 1, camera_id="F1", sequence=i + 1)
             for i, (h, w) in enumerate([(64, 64), (96, 128), (128, 128)])]
    port = _free_port()
    out = Path(tempfile.mkdtemp(prefix="mvic-fuzz-"))
    log = open(out / "server.log", "w")
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/mvic-server"), "--device", "cpu", "--listen", f"127.0.0.1:{port}",
         "--weights", str(weights), "--out", str(out / "out"), "--set", "grouping.max_wait_ms=200"],
        stdout=log, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
    try:
        grpc.channel_ready_future(channel).result(timeout=120)
        time.sleep(2)  # the model loads after the port opens; health says SERVING then
        outcomes: dict[str, int] = {}
        unnamed: list[str] = []
        samples: list[tuple[int, float, int]] = [(0, *_proc_sample(server.pid))]
        slowest = 0.0
        count = 0
        packets = hostile_packets(views, max_pixels=args.max_pixels, max_stream=1 << 18)
        sessions = hostile_sessions(views, packets, model.spec.model_id, model.weights_hash)

        @settings(max_examples=args.cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(messages=sessions)
        def case(messages):
            nonlocal slowest, count
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode} before case {count}")
            result = run_session(channel, messages, args.deadline)
            count += 1
            slowest = max(slowest, result.seconds)
            label = result.label() + ("" if result.named else " (UNNAMED)")
            outcomes[label] = outcomes.get(label, 0) + 1
            if not result.named:
                unnamed.append(f"case {count}: {label}, {len(messages)} messages, first {messages[0][0][:40]!r}")
            if count % 250 == 0:
                samples.append((count, *_proc_sample(server.pid)))

        random.seed(args.seed)
        t0 = time.perf_counter()
        case()
        elapsed = time.perf_counter() - t0
        alive = server.poll() is None
        # a well-behaved camera afterwards: three frames of a fresh id are stored and acked
        sane = [(hello_bytes(b"SANE1", b"", model.spec.model_id, model.weights_hash), None)]
        now = time.time_ns()
        sane += [(packet_bytes(i + 1, now + i * 10**8, pack(model.compress_view(
            random_image(rng, 64, 64), 1, camera_id="SANE1", sequence=i + 1, capture_ns=now + i * 10**8))), i + 1)
            for i in range(3)]
        final = run_session(channel, sane, 60.0)
        samples.append((count, *_proc_sample(server.pid)))
    finally:
        channel.close()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    print(f"# fuzz against mvic-server ({model.spec.name}, {weights.name}) on loopback, CPU, "
          f"{os.cpu_count()} cores")
    print(f"cases {count} in {elapsed:.0f} s; server alive after: {alive}; slowest case {slowest:.2f} s "
          f"(deadline {args.deadline:g} s)")
    for name, n in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {name:36s} {n}")
    print("server RSS MiB / open fds by case: " + ", ".join(f"{c}: {r:.0f}/{f}" for c, r, f in samples))
    print(f"well-behaved camera afterwards: welcomed {final.welcomed}, acks {final.acks}, "
          f"unanswered {final.unanswered}, errors {final.packet_errors}")
    for line in unnamed[:20]:
        print("  " + line)
    log_size = (out / "server.log").stat().st_size
    print(f"server log {log_size / 1e6:.1f} MB ({out / 'server.log'})")
    ok = alive and not unnamed and final.welcomed and not final.unanswered
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
