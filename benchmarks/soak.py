"""Soak run (issue 13): camera nodes stream to one fusion server for minutes while both are restarted on a timer;
afterwards every captured frame must be on disk exactly once, and memory and file descriptors must not grow.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--nodes 7] [--fps 2] [--server-every 120] [--node-every 180]
                                        [--sample-every 10] [--warmup 60] [--model M --weights W] [--work DIR]

Real ``mvic-server`` and ``mvic-node`` processes on loopback (``tests/e2e/harness.Proc``), each node on its view of
the embedded synthetic scene (``--height`` x ``--width``, small so that two cores keep up), every node on one capture
schedule of ``minutes * 60 * fps`` frames. The server is restarted every ``--server-every`` s and one node (in turn)
every ``--node-every`` s, by SIGKILL and SIGTERM alternately (a crash, then a planned stop). Without ``--weights``
the tiny test model of ``tests/conftest.py`` is exported into the work folder.

Checks, printed at the end (exit status 1 when one fails):
* lost: a frame of the schedule without its PNG (``out/<camera>/<capture_ns>.png``); extra: a PNG off the schedule;
* decoded twice: every PNG write is the rename of ``.part`` onto its name (``mvic.shared.fileio.write_atomic``),
  counted with inotify (IN_MOVED_TO). A second write of a frame is allowed only after a server stop whose journal
  (``out/acks.json``, read once the process is gone) did not yet cover the frame's sequence (learnt from the
  spool's file names, polled): written, not yet acknowledged, so the node resent it. Anything else is a duplicate;
* spools empty and every node exited 0 after the schedule ended.

Every ``--sample-every`` s the RSS (VmRSS) and open file descriptors of the server and of each node are read from
``/proc`` and printed as a series, with the packets waiting in the spools. The verdict fits a line to each process
life's samples after ``--warmup`` s and flags RSS growth over ``--rss-mib-per-min`` (and 8 MiB in all) or a net fd
growth over ``--fd-growth``.

Not part of the test suite (minutes of wall time): the e2e tests cover each fault alone.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import platform
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.e2e.harness, tests.conftest

import yaml  # noqa: E402

from mvic.tools.demo import free_port, scrape_metrics  # noqa: E402
from tests.e2e.harness import Proc  # noqa: E402

IN_MOVED_TO = 0x80
IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_SPOOLED = re.compile(r"^(\d{20})-(\d{1,20})\.mvic$")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the capture schedule (default 10)")
    p.add_argument("--nodes", type=int, default=7, help="camera nodes C1..CN (default 7)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second per node (default 2)")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--server-every", type=float, default=120.0, help="restart the server every S s (0: never)")
    p.add_argument("--node-every", type=float, default=180.0, help="restart a node every S s (0: never)")
    p.add_argument("--sample-every", type=float, default=10.0, help="RSS/fd sampling period, s (default 10)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds of each process life left out of the growth "
                   "verdict (default 60)")
    p.add_argument("--rss-mib-per-min", type=float, default=2.0, help="RSS slope that counts as growth")
    p.add_argument("--fd-growth", type=int, default=4, help="net fd increase over a life that counts as growth")
    p.add_argument("--lead", type=float, default=0.0, help="seconds from the nodes' start to the schedule's start "
                   "(default: 10 + 3 per node, time for them to import torch)")
    p.add_argument("--finish-timeout", type=float, default=120.0, help="after the schedule, the nodes wait this "
                   "long for their last acks (link.finish_timeout_s; default 120)")
    p.add_argument("--model", default="test-tiny-fast", help="architecture (default: the tiny test model)")
    p.add_argument("--weights", default="", help="weights file; default: the tiny test model exported into --work "
                   "for a test-* model, else the installed weights of --model")
    p.add_argument("--work", default="", help="folder for logs, spools and output (default: a new temp folder, "
                   "removed when everything passed)")
    return p


# ------------------------------------------------------------------------------------------------ watchers
class PngWrites:
    """inotify on ``out/<camera>/``: the times each PNG was renamed into place."""

    def __init__(self, folders: dict[str, Path]):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._cameras: dict[int, str] = {}
        for camera, folder in folders.items():
            folder.mkdir(parents=True, exist_ok=True)  # before the server: no write escapes the watch
            wd = self._libc.inotify_add_watch(self.fd, str(folder).encode(), IN_MOVED_TO)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder} failed")
            self._cameras[wd] = camera
        self.writes: dict[str, dict[int, list[float]]] = {c: {} for c in folders}
        self.overflowed = False

    def poll(self) -> None:
        while select.select([self.fd], [], [], 0)[0]:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            now, i = time.monotonic(), 0
            while i < len(buf):
                wd, mask, _, length = _EVENT.unpack_from(buf, i)
                name = buf[i + _EVENT.size:i + _EVENT.size + length].rstrip(b"\0").decode()
                i += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                elif wd in self._cameras and name.endswith(".png") and name[:-4].isdigit():
                    self.writes[self._cameras[wd]].setdefault(int(name[:-4]), []).append(now)

    def close(self) -> None:
        os.close(self.fd)


def scan_spools(spool: Path, cameras: list[str], seqs: dict[str, dict[int, int]]) -> int:
    """Learn capture_ns -> sequence from the spooled packets' names; the number of packets waiting."""
    waiting = 0
    for camera in cameras:
        try:
            names = os.listdir(spool / camera)
        except FileNotFoundError:
            continue
        for name in names:
            if m := _SPOOLED.match(name):
                seqs[camera][int(m.group(2))] = int(m.group(1))
                waiting += 1
    return waiting


def proc_sample(pid: int) -> tuple[float, int] | None:
    """(RSS MiB, open fds) of a live process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return (int(m.group(1)) / 1024 if m else 0.0), fds


@dataclass
class Life:
    """One process life of a role (the server, or a camera's node): its samples (age s, RSS MiB, fds)."""

    role: str
    pid: int
    started: float
    samples: list[tuple[float, float, int]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- the run
class Soak:
    def __init__(self, args: argparse.Namespace, root: Path, weights: str):
        self.args, self.root = args, root
        self.cameras = [f"C{i + 1}" for i in range(args.nodes)]
        self.out, self.spool = root / "out", root / "spool"
        (root / "logs").mkdir(parents=True, exist_ok=True)
        self.grpc_port, self.server_metrics = free_port(), free_port()
        self.frames = round(args.minutes * 60 * args.fps)
        self.procs: dict[str, Proc] = {}
        self.lives: list[Life] = []
        self.stops: list[tuple[float, dict[str, int]]] = []  # server stops: (monotonic time, journal then)
        self.events: list[str] = []
        self.seqs: dict[str, dict[int, int]] = {c: {} for c in self.cameras}
        self.series: list[tuple[float, dict[str, tuple[float, int] | None], int]] = []
        self.weights = weights
        self.start_at_ns = 0
        self.t0 = time.monotonic()
        self._spawned = 0

    # ---------------------------------------------------------------------------------------- processes
    def _spawn(self, role: str, module: str, config: dict) -> Proc:
        self._spawned += 1
        path = self.root / f"{role}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        proc = Proc(role, [module, "--config", str(path)], self.root / "logs" / f"{role}.log", self.root)
        self.procs[role] = proc
        self.lives.append(Life(role, proc.popen.pid, time.monotonic()))
        return proc

    def start_server(self) -> Proc:
        a = self.args
        return self._spawn("server", "mvic.fusion_server.cli", {
            "listen": f"127.0.0.1:{self.grpc_port}", "device": "cpu", "model": a.model, "weights": self.weights,
            "out": str(self.out), "cameras": self.cameras, "log_level": "INFO",
            "grouping": {"tolerance_ms": 250.0 / a.fps, "max_wait_ms": 3000.0},
            "decode": {"workers": 1, "max_inflight_groups": 4, "torch_threads": 1},
            "sinks": {"png": True, "png_name": "capture_ns"},
            "metrics_port": self.server_metrics, "shutdown_grace_s": 10.0})

    def start_node(self, camera: str) -> Proc:
        a = self.args
        return self._spawn(camera, "mvic.node.cli", {
            "camera": camera, "server": f"127.0.0.1:{self.grpc_port}", "log_level": "INFO",
            "source": {"uri": "", "fps": a.fps, "frames": self.frames, "start_at_ns": self.start_at_ns,
                       "synthetic": {"seed": 7, "cameras": a.nodes, "height": a.height, "width": a.width}},
            "encode": {"model": a.model, "weights": self.weights, "rate": 2, "threads": 1, "policy": "every"},
            "spool": {"dir": str(self.spool)},
            "link": {"backoff_initial_s": 0.2, "backoff_max_s": 2.0, "drain_timeout_s": 5.0,
                     "finish_timeout_s": a.finish_timeout},
        })

    def stop(self, role: str, sig: int, timeout: float = 60.0) -> None:
        proc = self.procs[role]
        proc.signal(sig)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.note(f"{role} still running {timeout:g} s after {signal.Signals(sig).name}: SIGKILL")
            proc.kill()

    def journal(self) -> dict[str, int]:
        try:
            return json.loads((self.out / "acks.json").read_text())["cameras"]
        except (OSError, ValueError, KeyError):
            return {}

    def restart_server(self, sig: int) -> None:
        self.stop("server", sig)
        self.stops.append((time.monotonic(), self.journal()))
        self.note(f"server {signal.Signals(sig).name}, journal {sum(self.stops[-1][1].values())} frames; restarted")
        self.start_server()

    def restart_node(self, camera: str, sig: int) -> None:
        self.stop(camera, sig)
        code = self.procs[camera].popen.returncode
        self.note(f"node {camera} {signal.Signals(sig).name} (exit {code}); restarted")
        self.start_node(camera)

    def note(self, text: str) -> None:
        line = f"[{self.clock():7.1f} s] {text}"
        self.events.append(line)
        print(line, flush=True)

    def clock(self) -> float:
        """Seconds since the capture schedule began (negative before)."""
        return (time.time_ns() - self.start_at_ns) / 1e9 if self.start_at_ns else time.monotonic() - self.t0

    # ------------------------------------------------------------------------------------------ sampling
    def sample(self, waiting: int) -> None:
        now = time.monotonic()
        row: dict[str, tuple[float, int] | None] = {}
        for life in self.lives:
            proc = self.procs.get(life.role)
            if proc is None or proc.popen.pid != life.pid or not proc.alive:
                continue
            got = proc_sample(life.pid)
            row[life.role] = got
            if got is not None:
                life.samples.append((now - life.started, *got))
        self.series.append((self.clock(), row, waiting))

    def close(self) -> None:
        for proc in self.procs.values():
            proc.signal(signal.SIGKILL)
        for proc in self.procs.values():
            try:
                proc.popen.wait(30)
            except subprocess.TimeoutExpired:
                pass


def wait_ready(soak: Soak, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if scrape_metrics(soak.server_metrics).get("mvic_server_model_loaded") == 1.0:
                return
        except OSError:
            pass
        if not soak.procs["server"].alive:
            break
        time.sleep(0.2)
    raise SystemExit(f"the server did not come up\n{soak.procs['server'].tail()}")


def run(args: argparse.Namespace, root: Path, weights: str) -> tuple[Soak, PngWrites]:
    soak = Soak(args, root, weights)
    writes = PngWrites({c: soak.out / c for c in soak.cameras})
    try:
        soak.start_server()
        wait_ready(soak)
        lead = args.lead or 10.0 + 3.0 * args.nodes
        soak.start_at_ns = time.time_ns() + int(lead * 1e9)
        for camera in soak.cameras:
            soak.start_node(camera)
        duration = args.minutes * 60
        plan = [(k * args.server_every, "server") for k in range(1, int(duration // args.server_every) + 1)
                if args.server_every and k * args.server_every < duration]
        plan += [(k * args.node_every, "node") for k in range(1, int(duration // args.node_every) + 1)
                 if args.node_every and k * args.node_every < duration]
        plan.sort()
        soak.note(f"{args.nodes} nodes x {soak.frames} frames at {args.fps:g} fps, {args.height}x{args.width}; "
                  f"restarts at {', '.join(f'{t:g} s {what}' for t, what in plan) or 'none'}")
        counts = {"server": 0, "node": 0}
        next_sample = time.monotonic()
        finish_by = None
        while True:
            now_s = soak.clock()
            if plan and now_s >= plan[0][0]:
                _, what = plan.pop(0)
                sig = signal.SIGKILL if counts[what] % 2 == 0 else signal.SIGTERM
                if what == "server":
                    soak.restart_server(sig)
                else:
                    soak.restart_node(soak.cameras[counts[what] % len(soak.cameras)], sig)
                counts[what] += 1
            writes.poll()
            waiting = scan_spools(soak.spool, soak.cameras, soak.seqs)
            if time.monotonic() >= next_sample:
                soak.sample(waiting)
                next_sample += args.sample_every
            nodes_alive = [c for c in soak.cameras if soak.procs[c].alive]
            if now_s >= duration and finish_by is None:
                finish_by = time.monotonic() + args.finish_timeout + 30.0
                soak.note("schedule over; waiting for the nodes to deliver their last frames and exit")
            if finish_by is not None and (not nodes_alive or time.monotonic() > finish_by):
                break
            if not soak.procs["server"].alive:
                soak.note(f"server died on its own (exit {soak.procs['server'].popen.returncode}); restarted")
                soak.stops.append((time.monotonic(), soak.journal()))
                soak.start_server()
            time.sleep(0.1)
        soak.note(f"nodes finished: exit codes {', '.join(f'{c} {soak.procs[c].popen.poll()}' for c in soak.cameras)}")
        soak.sample(scan_spools(soak.spool, soak.cameras, soak.seqs))
        soak.stop("server", signal.SIGTERM)
        writes.poll()
        return soak, writes
    finally:
        soak.close()


# ---------------------------------------------------------------------------------------------- reporting
def check_frames(soak: Soak, writes: PngWrites) -> tuple[list[str], bool]:
    """Lost, extra and twice-decoded frames per camera; (lines, ok)."""
    fps, ok = soak.args.fps, True
    lines = [(f"{'camera':8}{'expected':>9}{'on disk':>9}{'lost':>6}{'extra':>7}{'written 2x+':>12}"
              f"{'  allowed':>9}{'  dup':>6}{'  unknown':>9}  spool  exit")]
    for cam in soak.cameras:
        expected = {soak.start_at_ns + round(i * 1e9 / fps) for i in range(soak.frames)}
        present = {int(p.stem) for p in (soak.out / cam).glob("*.png") if p.stem.isdigit()}
        lost, extra = expected - present, present - expected
        allowed = dup = unknown = 0
        for capture, times in writes.writes[cam].items():
            for before, after in itertools.pairwise(times):
                stops = [(t, j) for t, j in soak.stops if before < t < after]
                seq = soak.seqs[cam].get(capture)
                if not stops:
                    dup += 1  # written twice by one server life
                elif seq is None:
                    unknown += 1
                elif seq <= stops[-1][1].get(cam, 0):
                    dup += 1  # the journal held it when the server stopped: must not be decoded again
                else:
                    allowed += 1
        twice = sum(1 for t in writes.writes[cam].values() if len(t) > 1)
        left = len(list((soak.spool / cam).glob("*.mvic")))
        code = soak.procs[cam].popen.poll()
        ok &= not lost and not extra and not dup and not unknown and left == 0 and code == 0
        lines.append(f"{cam:8}{len(expected):>9}{len(present):>9}{len(lost):>6}{len(extra):>7}{twice:>12}"
                     f"{allowed:>9}{dup:>6}{unknown:>9}  {left:>5}  {code}")
    if writes.overflowed:
        lines.append("inotify queue overflowed: some writes were not seen")
        ok = False
    return lines, ok


def series_table(soak: Soak) -> list[str]:
    roles = ["server", *soak.cameras]
    head = f"{'t s':>7}  {'spool':>5}  " + "  ".join(f"{r:>13}" for r in roles)
    lines = [head, f"{'':>7}  {'pkts':>5}  " + "  ".join(f"{'RSS MiB/fds':>13}" for _ in roles)]
    for t, row, waiting in soak.series:
        cells = [f"{row[r][0]:8.0f}/{row[r][1]:<4d}" if row.get(r) else f"{'-':>13}" for r in roles]
        lines.append(f"{t:7.0f}  {waiting:>5}  " + "  ".join(cells))
    return lines


def growth_verdict(soak: Soak) -> tuple[list[str], bool]:
    a, ok, lines = soak.args, True, []
    for life in soak.lives:
        settled = [s for s in life.samples if s[0] >= a.warmup]
        if len(settled) < 4:
            continue
        ages = [s[0] / 60 for s in settled]
        rss = [s[1] for s in settled]
        fds = [s[2] for s in settled]
        slope = _slope(ages, rss)
        rss_grows = slope > a.rss_mib_per_min and rss[-1] - rss[0] > 8.0
        fd_grows = fds[-1] - min(fds) > a.fd_growth
        ok &= not rss_grows and not fd_grows
        lines.append(f"{life.role:7} pid {life.pid:<8} {len(settled):3d} samples after warm-up: RSS {rss[0]:7.1f} -> "
                     f"{rss[-1]:7.1f} MiB ({slope:+6.2f} MiB/min){'  GROWS' if rss_grows else ''}; fds "
                     f"{fds[0]} -> {fds[-1]}{'  GROWS' if fd_grows else ''}")
    if not lines:
        lines.append(f"no process life lasted {a.warmup:g} s + 4 samples: no growth verdict (run longer)")
    return lines, ok


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def tiny_weights(model: str, folder: Path) -> Path:
    from mvic.shared.codec.registry import export_weights
    from tests.conftest import make_tiny_model

    path = folder / f"{model}.safetensors"
    export_weights(make_tiny_model(model), path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.nodes < 1 or args.fps <= 0 or args.minutes <= 0 or args.sample_every <= 0:
        raise SystemExit("--nodes, --fps, --minutes and --sample-every must be positive")
    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mvic-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    weights = args.weights or (str(tiny_weights(args.model, root)) if args.model.startswith("test-") else "")
    print(f"soak: {platform.node()}, {os.cpu_count()} CPUs, python {platform.python_version()}; work folder {root}",
          flush=True)
    started = time.monotonic()
    soak, writes = run(args, root, weights)
    frames, frames_ok = check_frames(soak, writes)
    verdict, growth_ok = growth_verdict(soak)
    print(f"\nRSS and open fds every {args.sample_every:g} s (t: seconds since the schedule began; spool: packets "
          "waiting, all nodes)")
    print("\n".join(series_table(soak)))
    print("\nevents:\n" + "\n".join(soak.events))
    print("\nframes (written 2x+: frames whose PNG was written more than once; allowed: again after a server stop "
          "that had not journaled it; dup: any other second write; unknown: sequence not learnt):")
    print("\n".join(frames))
    print(f"\ngrowth after {args.warmup:g} s of warm-up per process life:")
    print("\n".join(verdict))
    ok = frames_ok and growth_ok
    print(f"\nverdict: {'PASS' if ok else 'FAIL'}: frames {'exactly once' if frames_ok else 'LOST OR DUPLICATED'}, "
          f"{'no growth' if growth_ok else 'GROWTH'}; {time.monotonic() - started:.0f} s wall")
    writes.close()
    if ok and not args.work:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"logs, spools and output kept in {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
