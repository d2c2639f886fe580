"""``mvic-demo``: a fusion server and K camera nodes on this machine, end to end, with a summary.

    mvic-demo                              # 7 cameras on the embedded synthetic scene, 8 frames each
    mvic-demo --frames 20 --fps 2 --keep-open 60    # longer; keep the live page up for a minute at the end
    mvic-demo --wildtrack /data/wildtrack  # the seven WildTrack videos (cam1.mp4 ... or C1.mp4 ... in that folder)

The demo runs the real programs as separate processes, exactly as an installation would: ``mvic-server`` (CPU
here, ``--device`` to choose; one torch thread per decode thread and bf16 synthesis where the CPU has it natively:
``--server-threads``, ``--decode-precision``) and one ``mvic-node`` per camera, all on loopback. The nodes share one capture
schedule (``--start-at``) so the server can group their views by capture time. While they run, the demo polls the
server's live page (printed URL) and prints progress; at the end it reads the server's and the nodes' Prometheus
metrics and prints frames captured / sent / decoded / lost, mean bpp from the real bitstream bytes, PSNR of the
reconstructions against the source frames, throughput and latency. On a terminal the progress line is rewritten in
place; when stdout is a file or a pipe (CI, ``| tee``), it is a plain line every few seconds instead.

This module imports neither the node nor the server: it starts them as programs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mvic.shared.codec.images import psnr, read_rgb
from mvic.shared.model_table import DEFAULT_MODEL
from mvic.shared.rig import rig_to_yaml
from mvic.shared.scene import Scene, SceneConfig

DEMO_SEED = 2026  # a scene no training run uses (training: seeds 0..15, evaluation: >= 1000 below this)
PLAIN_PROGRESS_EVERY_S = 5.0  # stdout not a terminal: one progress line this often
WILDTRACK_NAMES = ("cam{n}.mp4", "C{n}.mp4", "c{n}.mp4", "C{n}.avi", "cam{n}.avi")


@dataclass(frozen=True)
class Summary:
    cameras: int
    frames_per_camera: int
    captured: int
    sent: int
    decoded: int
    lost: int  # captured but never decoded
    mean_bpp: float
    psnr_db: float | None  # None when the sources are not known to the demo
    seconds: float
    frames_per_second: float
    ack_latency_s: float  # mean packet received -> ack, server clock
    capture_to_ack_s: float  # mean capture (camera clock) -> ack
    weights: str


class Progress:
    """One status line. On a terminal it is rewritten in place (``\\r``) at every update; on anything else (a log
    file, a pipe) a plain line is printed at most every ``every_s`` seconds, and the last state once more at
    ``close`` if it was not printed, so a log gets a few lines instead of thousands of carriage returns."""

    def __init__(self, stream: TextIO | None = None, every_s: float = PLAIN_PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stdout
        self.live = self.stream.isatty()
        self.every_s = every_s
        self.clock = clock
        self._printed_at: float | None = None
        self._printed = ""  # the last line printed (plain mode)
        self._latest = ""

    def update(self, text: str) -> None:
        self._latest = text
        if self.live:
            self.stream.write(f"\r{text}")
            self.stream.flush()
            return
        now = self.clock()
        if self._printed_at is None or now - self._printed_at >= self.every_s:
            self._print(text)
            self._printed_at = now

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
        elif self._latest and self._latest != self._printed:
            self._print(self._latest)

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self._printed = text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_metrics(port: int) -> dict[str, float]:
    """Prometheus text of 127.0.0.1:port/metrics -> {sample name (summed over labels) and name{labels}: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
            if sample.labels:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def _stats(http_port: int) -> dict | None:
    try:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/stats", timeout=2).read())
    except OSError:
        return None


def resolve_weights(model: str, weights: str | None, out: Path) -> tuple[str, bool]:
    """(weights file, trained?): the given file, else the installed trained weights, else labelled random ones."""
    from mvic.shared.codec import registry
    from mvic.shared.errors import NoTrainedWeightsError

    if weights:
        return weights, True
    try:
        return str(registry.default_weights(model).path), True
    except NoTrainedWeightsError:
        import torch

        from mvic.shared.codec.model import LDMIC
        from mvic.shared.model_table import spec_by_name

        torch.manual_seed(0)
        path = out / f"{model}-RANDOM-untrained.safetensors"
        registry.export_weights(LDMIC(spec_by_name(model)), path)
        return str(path), False


def wildtrack_videos(root: Path, cameras: int) -> list[Path]:
    videos = []
    for n in range(1, cameras + 1):
        found = [root / pat.format(n=n) for pat in WILDTRACK_NAMES if (root / pat.format(n=n)).is_file()]
        if not found:
            raise FileNotFoundError(f"{root} has no video for camera C{n} (looked for "
                                    f"{', '.join(p.format(n=n) for p in WILDTRACK_NAMES)})")
        videos.append(found[0])
    return videos


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Demo:
    """Starts the server, then the nodes; stops in reverse order. One instance per run."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out).resolve()
        self.cams = [f"C{i}" for i in range(1, args.cameras + 1)]
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.grpc_port, self.http_port = free_port(), args.http_port or free_port()
        self.server_metrics, self.node_metrics = free_port(), {c: free_port() for c in self.cams}
        h, w = (int(v) for v in args.size.lower().split("x"))
        self.scene = SceneConfig(seed=args.seed, cameras=args.cameras, height=h, width=w)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.out / "logs" / f"{name}.log", "w")
        proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", *argv], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.procs.append((name, proc))

    def start_server(self, weights: str) -> None:
        a = self.args
        cfg = _write_yaml(self.out / "config" / "server.yaml", {
            "listen": f"127.0.0.1:{self.grpc_port}", "device": a.device, "model": a.model, "weights": weights,
            "out": str(self.out / "frames"), "cameras": self.cams, "log_level": "INFO",
            # every view of a timestamp is awaited (cameras on two shared cores encode seconds apart)
            "grouping": {"tolerance_ms": 0.25e3 / a.fps, "max_wait_ms": a.max_wait_s * 1e3},
            "sinks": {"png": True, "png_name": "capture_ns", "video": a.video, "video_fps": a.fps},
            "http": f"127.0.0.1:{self.http_port}", "metrics_port": self.server_metrics,
            # one torch thread per decode thread: the server's entropy workers and its synthesis thread already run
            # side by side, and seven encoders share the cores (OpenMP teams that wait for each other's threads on
            # an oversubscribed CPU are what made the demo slow); bf16 synthesis where the CPU has it natively
            "decode": {"torch_threads": a.server_threads, "precision": a.decode_precision, "fusion": not a.no_fusion,
                       "rig": self.rig_file()},
        })
        self._spawn("server", ["mvic.fusion_server.cli", "--config", str(cfg)])

    def rig_file(self) -> str:
        """The cameras' calibration for the server: --rig, else the synthetic scene's own (none for WildTrack or
        with --no-rig)."""
        if self.args.rig:
            return str(Path(self.args.rig).resolve())
        if self.args.wildtrack or self.args.no_rig:
            return ""
        path = self.out / "config" / "rig.yaml"
        path.write_text(rig_to_yaml(Scene(self.scene).rig()))
        return str(path)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(["server"])
            s = _stats(self.http_port)
            if s and s.get("ready"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"the server was not ready within {timeout:.0f} s; see {self.out}/logs/server.log")

    def start_nodes(self, weights: str, videos: list[Path] | None) -> int:
        a = self.args
        start_at = time.time_ns() + int(a.lead_s * 1e9)  # every node captures frame i at start_at + i / fps
        for i, cam in enumerate(self.cams):
            source = {"uri": str(videos[i]) if videos else "", "fps": a.fps, "frames": a.frames,
                      "start_at_ns": start_at}
            if not videos:
                source["synthetic"] = {"seed": self.scene.seed, "cameras": self.scene.cameras,
                                       "height": self.scene.height, "width": self.scene.width}
            cfg = _write_yaml(self.out / "config" / f"node-{cam}.yaml", {
                "camera": cam, "server": f"127.0.0.1:{self.grpc_port}", "source": source,
                "encode": {"model": a.model, "weights": weights, "rate": a.rate, "threads": 1, "policy": "every"},
                "spool": {"dir": str(self.out / "spool")},
                "metrics": {"port": self.node_metrics[cam], "host": "127.0.0.1"},
                "link": {"finish_timeout_s": 600.0},
            })
            self._spawn(cam, ["mvic.node.cli", "--config", str(cfg)])
        return start_at

    def _check_alive(self, names: list[str]) -> None:
        for name, proc in self.procs:
            if name in names and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see {self.out}/logs/{name}.log")

    def run_nodes(self, progress: Progress | None = None) -> dict[str, dict[str, float]]:
        """Wait for every node to finish (all frames acked), printing progress; their last metrics."""
        progress = progress or Progress()
        total = len(self.cams) * self.args.frames
        last: dict[str, dict[str, float]] = {}
        done: set[str] = set()
        while len(done) < len(self.cams):
            self._check_alive(["server"])
            for name, proc in self.procs:
                if name in self.node_metrics and name not in done:
                    try:
                        last[name] = scrape_metrics(self.node_metrics[name])
                    except OSError:
                        pass
                    if proc.poll() is not None:
                        done.add(name)
                        if proc.returncode != 0:
                            print(f"  {name} exited with code {proc.returncode} (see logs/{name}.log)")
            s = _stats(self.http_port) or {"cameras": []}
            decoded = sum(c.get("frames_decoded", 0) for c in s["cameras"])
            fps = sum(c.get("fps", 0.0) for c in s["cameras"])
            progress.update(f"  decoded {decoded}/{total} views · {fps:.2f} views/s · nodes done "
                            f"{len(done)}/{len(self.cams)}")
            time.sleep(1.0)
        progress.close()
        return last

    def stop(self) -> None:
        for name, proc in reversed(self.procs):  # nodes first, the server last
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


_STOPPED = re.compile(r"stopped: captured (\d+), encoded \d+, sent (\d+)")


def node_counts(log_path: Path, last_metrics: dict[str, float]) -> tuple[int, int]:
    """(captured, sent) of a finished node: its final log line, else its last scraped metrics."""
    found = _STOPPED.findall(log_path.read_text(errors="replace")) if log_path.is_file() else []
    if found:
        return int(found[-1][0]), int(found[-1][1])
    return (int(last_metrics.get("mvic_node_frames_captured_total", 0)),
            int(last_metrics.get("mvic_node_packets_sent_total", 0)))


def reconstruction_psnr(frames_dir: Path, scene: SceneConfig, start_at: int, fps: float) -> tuple[float, int]:
    """Mean PSNR of the written reconstructions against the scene's source views, and how many were compared."""
    renderer = Scene(scene)
    rendered: dict[int, np.ndarray] = {}
    values = []
    for cam_dir in sorted(p for p in frames_dir.iterdir() if p.is_dir()):
        k = int(cam_dir.name[1:]) - 1
        for png in sorted(cam_dir.glob("*.png")):
            index = round((int(png.stem) - start_at) * fps / 1e9)
            if index not in rendered:
                rendered[index] = renderer.render(index)
            recon = read_rgb(png)
            values.append(psnr(recon, rendered[index][k]))
    return (float(np.mean(values)) if values else float("nan")), len(values)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvic-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cameras", type=int, default=7, help="camera nodes C1..CK (default %(default)s)")
    p.add_argument("--frames", type=int, default=8, help="frames per camera (default %(default)s)")
    p.add_argument("--fps", type=float, default=1.0, help="capture rate of every camera (default %(default)s)")
    p.add_argument("--size", default="270x480", help="synthetic view size HxW (default %(default)s)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="synthetic scene seed (default %(default)s)")
    p.add_argument("--wildtrack", type=Path, metavar="DIR", help="use the WildTrack videos in DIR instead")
    p.add_argument("--rig", type=Path, metavar="FILE", help="the cameras' calibration for the server's decode.rig "
                   "(mvic.shared.rig YAML; default: the synthetic scene's own, none for --wildtrack)")
    p.add_argument("--no-rig", action="store_true", help="the server fuses without the scene's calibration")
    p.add_argument("--model", default=DEFAULT_MODEL, help="architecture (default %(default)s)")
    p.add_argument("--weights", help="weights file (default: the installed trained weights)")
    p.add_argument("--rate", type=int, default=2, help="rate index 0..4 (default %(default)s)")
    p.add_argument("--device", default="cpu", help="server decode device: cpu, cuda, auto (default %(default)s)")
    p.add_argument("--decode-precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="the server's synthesis arithmetic, decode.precision (default %(default)s: bf16 where the CPU "
                        "has native bf16)")
    p.add_argument("--server-threads", type=int, default=1, help="the server's torch threads, decode.torch_threads "
                   "(default %(default)s; 0 = torch's default, one per core)")
    p.add_argument("--no-fusion", action="store_true",
                   help="the server decodes without the view fusion (decode.fusion: false; the learned JCT alone)")
    p.add_argument("--video", action="store_true", help="the server also writes one video per camera")
    p.add_argument("--out", default="mvic-demo-out", help="output folder, emptied first (default %(default)s)")
    p.add_argument("--http-port", type=int, default=8080, help="live page port, 0 = any free (default %(default)s)")
    p.add_argument("--keep-open", type=float, default=0.0, metavar="S",
                   help="keep the server and its live page up this many seconds after the last frame")
    p.add_argument("--lead-s", type=float, default=20.0, help="seconds from start to the first capture, for the "
                   "nodes to load the model (default %(default)s)")
    p.add_argument("--max-wait-s", type=float, default=60.0,
                   help="the server's wait for a timestamp's missing views (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cameras < 1 or args.frames < 1 or args.fps <= 0:
        print("mvic-demo: need --cameras >= 1, --frames >= 1 and --fps > 0", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    for sub in ("logs", "config", "frames", "spool"):
        (out / sub).mkdir(parents=True)
    videos = wildtrack_videos(args.wildtrack, args.cameras) if args.wildtrack else None
    weights, trained = resolve_weights(args.model, args.weights, out)
    if not trained:
        print(f"mvic-demo: no trained weights are installed for {args.model}: using RANDOM weights ({weights}).\n"
              "  The system runs end to end, but the reconstructions will not resemble the scene; pass --weights "
              "FILE from mvic-train for real images.")
    demo = Demo(args)
    try:
        print(f"starting the fusion server ({args.device}) ...")
        demo.start_server(weights)
        demo.wait_ready()
        print(f"live page: http://127.0.0.1:{demo.http_port}/   (logs in {out}/logs)")
        start_at = demo.start_nodes(weights, videos)
        source = f"WildTrack videos in {args.wildtrack}" if videos else f"the synthetic scene (seed {args.seed})"
        print(f"{args.cameras} nodes capture {args.frames} frames each at {args.fps:g} fps from {source}")
        node_metrics = demo.run_nodes()
        seconds = time.time() - start_at / 1e9  # from the first scheduled capture to the last ack
        server = scrape_metrics(demo.server_metrics)
        if args.keep_open > 0:
            print(f"keeping the live page up for {args.keep_open:g} s ...")
            time.sleep(args.keep_open)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"mvic-demo: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.stop()
    total_psnr, compared = (None, 0) if videos else reconstruction_psnr(out / "frames", demo.scene, start_at, args.fps)
    decoded = int(server.get("mvic_server_frames_written_total", 0))
    node_totals = [node_counts(out / "logs" / f"{cam}.log", node_metrics.get(cam, {})) for cam in demo.cams]
    summary = Summary(
        cameras=args.cameras, frames_per_camera=args.frames,
        captured=sum(c for c, _ in node_totals), sent=sum(n for _, n in node_totals),
        decoded=decoded, lost=max(0, sum(c for c, _ in node_totals) - decoded),
        mean_bpp=8 * server.get("mvic_server_bitstream_bytes_total", 0) / max(1.0, server.get(
            "mvic_server_decoded_pixels_total", 0)),
        psnr_db=total_psnr, seconds=seconds, frames_per_second=decoded / max(seconds, 1e-9),
        ack_latency_s=server.get("mvic_server_ack_latency_seconds_sum", 0) / max(1.0, server.get(
            "mvic_server_ack_latency_seconds_count", 0)),
        capture_to_ack_s=server.get("mvic_server_capture_to_ack_seconds_sum", 0) / max(1.0, server.get(
            "mvic_server_capture_to_ack_seconds_count", 0)),
        weights=weights if trained else "RANDOM (untrained)")
    print_summary(summary, compared)
    (out / "summary.json").write_text(json.dumps(summary.__dict__, indent=1))
    return 0 if summary.lost == 0 else 1


def print_summary(s: Summary, compared: int) -> None:
    print("\nsummary")
    print(f"  cameras x frames        {s.cameras} x {s.frames_per_camera}")
    scheduled = s.cameras * s.frames_per_camera
    ended = f" (the sources ended after {s.captured} of {scheduled})" if s.captured < scheduled else ""
    print(f"  captured / sent         {s.captured} / {s.sent} views (sent counts resends){ended}")
    print(f"  decoded / lost          {s.decoded} / {s.lost}")
    print(f"  mean bpp                {s.mean_bpp:.4f} (real bitstream bytes, headers included)")
    if s.psnr_db is not None:
        print(f"  PSNR vs sources         {s.psnr_db:.2f} dB over {compared} views")
    print(f"  throughput              {s.frames_per_second:.2f} views/s over {s.seconds:.1f} s from the first capture")
    print(f"  latency                 {s.ack_latency_s:.2f} s received->ack, {s.capture_to_ack_s:.2f} s capture->ack")
    print(f"  weights                 {s.weights}")


if __name__ == "__main__":
    raise SystemExit(main())
