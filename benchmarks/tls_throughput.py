"""Throughput of the camera -> server gRPC link with mutual TLS vs plaintext, on loopback, side by side in one run.

    .venv/bin/python benchmarks/tls_throughput.py [--cameras 3] [--frames 40] [--height 64 --width 96] [--rounds 3]
                                                  [--model test-tiny-fast] [--weights W] [--png] [--work DIR]

One real ``mvic-server`` subprocess per mode (``python -m mvic.fusion_server.cli --config``; CPU device, one decode
worker, one torch thread), both started before the first round and kept warm for the whole run: ``plain`` listens
on 127.0.0.1 without TLS (allowed on loopback), ``tls`` with the server certificate of ``mvic-certs bundle``
(``mvic.tools.certs.main``, made in-process) and ``tls.client_ca``, so every stream is mutually authenticated.
Without ``--weights`` the tiny random model of ``tests/conftest.py`` is exported into the work folder.

The views are coded once, up front (10 + ``rounds`` x ``frames`` per camera, random images of ``height`` x ``width``,
rate 1, cameras' clocks 3 ms apart, 10 fps capture times): decoding such tiny views is cheap, so the link has a
large share of the time. Round r streams the next slice (sequences continue across rounds, so the warm server never
sees a resend). Round 0 of each mode is a warm-up of 10 views per camera, not in the table. The measured rounds alternate modes
(plain, tls, then tls, plain, ...: the order flips every round so neither mode always runs first), so the machine's
background load hits both alike.

A round: open one stream per camera (``tests/fusion_server/harness.MiniNode``: the generated stubs, a TLS channel
with that camera's certificate in ``tls`` mode; the handshake is inside the timed span), wait for every Welcome,
put all packets on the streams at once, and stop the clock when each stream's ack covers its last sequence.

Columns: views acked; seconds (first Hello -> last ack); views/s; server CPU ms per view = delta of utime+stime of
the server process (``/proc/<pid>/stat``, all its threads: gRPC, grouping, decode, sinks) over the round; client CPU
ms per view = ``time.process_time()`` delta of this process (the client threads, gRPC's C-core threads included);
payload bytes per view = packed bitstream bytes (``ViewPacket.bitstream``; protobuf, HTTP/2 and TLS record framing
are not counted). Decoded PNGs are not written unless ``--png`` (acks then wait for decode only), so the sinks'
PNG encoding does not drown the link.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.*

import grpc
import numpy as np
import yaml
from mvic.shared.bitstream import pack
from mvic.shared.codec.registry import export_weights, load_model
from mvic.tools import certs
from mvic.tools.demo import free_port

from tests.conftest import make_tiny_model, random_image
from tests.fusion_server.harness import FRAME_NS, T0, MiniNode

CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP = 10  # views per camera in each mode's warm-up round


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", type=int, default=3)
    p.add_argument("--frames", type=int, default=40, help="frames per camera per round")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per mode (plus one warm-up each)")
    p.add_argument("--model", default="test-tiny-fast")
    p.add_argument("--weights", default="", help="weights file (default: the tiny test model, exported)")
    p.add_argument("--png", action="store_true", help="let the server write PNGs (acks wait for them)")
    p.add_argument("--work", default="", help="work folder (default: a new temporary one)")
    return p


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15 of stat)


def encode(model, cameras: list[str], total: int, h: int, w: int) -> dict[str, list[tuple[int, int, bytes]]]:
    rng = np.random.default_rng(0)
    out: dict[str, list[tuple[int, int, bytes]]] = {}
    for k, cam in enumerate(cameras):
        out[cam] = []
        for i in range(total):
            capture = T0 + i * FRAME_NS + k * 3_000_000
            view = model.compress_view(random_image(rng, h, w), 1, camera_id=cam, sequence=i + 1, capture_ns=capture)
            out[cam].append((i + 1, capture, pack(view)))
    return out


class Server:
    def __init__(self, mode: str, root: Path, args: argparse.Namespace, weights: Path, tls: Path):
        self.mode, self.port = mode, free_port()
        config = {"listen": f"127.0.0.1:{self.port}", "device": "cpu", "model": args.model, "weights": str(weights),
                  "out": str(root / f"out-{mode}"), "log_level": "WARNING", "max_packet_bytes": 16 * 1024 * 1024,
                  "grouping": {"tolerance_ms": 20.0, "max_wait_ms": 300.0},
                  "decode": {"workers": 1, "torch_threads": 1},
                  "sinks": {"png": bool(args.png)}, "shutdown_grace_s": 5.0}
        if mode == "tls":
            config["tls"] = {"cert": str(tls / "server" / "server.crt"), "key": str(tls / "server" / "server.key"),
                             "client_ca": str(tls / "server" / "ca.crt")}
        path = root / f"server-{mode}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = (root / f"server-{mode}.log").open("wb")
        self.popen = subprocess.Popen([sys.executable, "-m", "mvic.fusion_server.cli", "--config", str(path)],
                                      stdout=self.log, stderr=subprocess.STDOUT, cwd=root)

    def wait_listening(self, timeout: float = 180.0) -> None:
        import socket
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.popen.poll() is not None:
                raise SystemExit(f"{self.mode} server exited {self.popen.returncode}; see {self.log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{self.mode} server not listening after {timeout:g} s")

    def cpu_s(self) -> float:
        return proc_cpu_s(self.popen.pid)

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
        self.log.close()


def credentials(tls: Path, camera: str) -> grpc.ChannelCredentials:
    folder = tls / camera
    return grpc.ssl_channel_credentials(root_certificates=(folder / "ca.crt").read_bytes(),
                                        private_key=(folder / f"{camera}.key").read_bytes(),
                                        certificate_chain=(folder / f"{camera}.crt").read_bytes())


def one_round(server: Server, model, views: dict[str, list[tuple[int, int, bytes]]], r: int, frames: int,
              tls: Path) -> dict[str, float]:
    start = 0 if r == 0 else WARMUP + (r - 1) * frames
    part = {cam: v[start:start + (WARMUP if r == 0 else frames)] for cam, v in views.items()}
    cpu_srv0, cpu_cli0, t0 = server.cpu_s(), time.process_time(), time.perf_counter()
    nodes = [MiniNode(server.port, cam, model, credentials=credentials(tls, cam) if server.mode == "tls" else None)
             for cam in part]
    try:
        for node in nodes:
            node.welcome(timeout=60)
        for node in nodes:
            for sequence, capture_ns, bitstream in part[node.camera]:
                node.send(sequence, bitstream, capture_ns)
        for node in nodes:
            last = part[node.camera][-1][0]
            if not node.wait_acked(last, timeout=300):
                raise SystemExit(f"{server.mode} round {r}: {node.camera} acked {node.acked} of {last} "
                                 f"(error {node.error}, packet errors {node.packet_errors[:3]})")
        seconds = time.perf_counter() - t0
        cpu_cli, cpu_srv = time.process_time() - cpu_cli0, server.cpu_s() - cpu_srv0
    finally:
        for node in nodes:
            node.close()
    n = sum(len(v) for v in part.values())
    payload = sum(len(b) for v in part.values() for _, _, b in v)
    return {"views": n, "seconds": seconds, "vps": n / seconds, "srv_ms": 1000 * cpu_srv / n,
            "cli_ms": 1000 * cpu_cli / n, "bytes": payload / n}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mvic-tls-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    cameras = [f"C{i + 1}" for i in range(args.cameras)]
    weights = Path(args.weights) if args.weights else root / f"{args.model}.safetensors"
    if not args.weights:
        export_weights(make_tiny_model(args.model), weights)
    model = load_model(weights)
    tls = root / "tls"
    if not (tls / "server" / "server.crt").exists():
        cert_args = ["bundle", "--out", str(tls), "--dns", "localhost", "--ip", "127.0.0.1"]
        for cam in cameras:
            cert_args += ["--camera", cam]
        with contextlib.redirect_stdout(sys.stderr):
            status = certs.main(cert_args)
        if status != 0:
            raise SystemExit("mvic-certs bundle failed")
    servers = {mode: Server(mode, root, args, weights, tls) for mode in ("plain", "tls")}
    try:
        t = time.perf_counter()
        views = encode(model, cameras, WARMUP + args.rounds * args.frames, args.height, args.width)
        print(f"# encoded {args.cameras} x {WARMUP + args.rounds * args.frames} views of {args.height}x{args.width} "
              f"in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for server in servers.values():
            server.wait_listening()
        results: dict[str, list[dict[str, float]]] = {"plain": [], "tls": []}
        for mode in ("plain", "tls"):  # warm-up, not reported
            w = one_round(servers[mode], model, views, 0, args.frames, tls)
            print(f"# warm-up {mode}: {w['views']} views in {w['seconds']:.2f} s", file=sys.stderr)
        for r in range(1, args.rounds + 1):
            order = ("plain", "tls") if r % 2 else ("tls", "plain")
            for mode in order:
                res = one_round(servers[mode], model, views, r, args.frames, tls)
                results[mode].append(res)
                print(f"# round {r} {mode}: {res['views']} views {res['seconds']:.2f} s {res['vps']:.1f} views/s "
                      f"srv {res['srv_ms']:.2f} ms/view cli {res['cli_ms']:.2f} ms/view", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()

    lines = [(f"Views {args.height}x{args.width}, {args.cameras} cameras x {args.frames} frames per round "
             f"(one stream per camera), model {args.model}"
             f"{' (tiny random test weights)' if not args.weights else ''}, CPU decode (1 worker, 1 torch thread), "
             f"PNG sink {'on' if args.png else 'off'}; {args.rounds} measured rounds per mode after one warm-up each, "
             f"modes alternating. Server CPU: /proc/<pid>/stat utime+stime of the server subprocess; client CPU: "
             f"time.process_time() of the benchmark process. Python {platform.python_version()}, "
             f"grpcio {grpc.__version__}."), "",
             "| mode | round | views | seconds | views/s | server CPU ms/view | client CPU ms/view | payload bytes/view |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mode in ("plain", "tls"):
        for i, res in enumerate(results[mode], 1):
            lines.append(f"| {mode} | {i} | {res['views']} | {res['seconds']:.2f} | {res['vps']:.1f} | "
                         f"{res['srv_ms']:.2f} | {res['cli_ms']:.2f} | {res['bytes']:.0f} |")
    for mode in ("plain", "tls"):
        rs = results[mode]
        lines.append(f"| **{mode}** | median | {rs[0]['views']} | "
                     f"{statistics.median(x['seconds'] for x in rs):.2f} | "
                     f"{statistics.median(x['vps'] for x in rs):.1f} | "
                     f"{statistics.median(x['srv_ms'] for x in rs):.2f} | "
                     f"{statistics.median(x['cli_ms'] for x in rs):.2f} | "
                     f"{statistics.median(x['bytes'] for x in rs):.0f} |")
    mp = statistics.median(x["vps"] for x in results["plain"])
    mt = statistics.median(x["vps"] for x in results["tls"])
    lines += ["", f"TLS / plaintext throughput (medians): {mt / mp:.2f}"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
