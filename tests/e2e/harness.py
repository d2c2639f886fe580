"""End-to-end harness: the real ``mvic-server`` and ``mvic-node`` programs as processes on loopback.

Tests here talk to the programs only over the wire (gRPC, Prometheus ``/metrics``) and through the files they
write (PNGs, the ack journal, the spool); they never import ``mvic.node`` or ``mvic.fusion_server``. Every process
runs in its own session (process group) so the ``cluster`` fixture can SIGKILL it and its children whatever the
test did; every wait here has a deadline and fails with the tails of the logs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from mvic.tools.demo import free_port
from mvic.tools.demo import scrape_metrics as scrape

MODEL = "test-tiny-fast"
HEIGHT, WIDTH = 64, 96  # synthetic views: small, so the tiny model codes a frame in milliseconds
FPS = 4.0
SEED = 7
CAMERAS = ("C1", "C2", "C3")
START_TIMEOUT_S = 90.0  # a process imports torch: seconds each on two shared cores
RUN_TIMEOUT_S = 120.0


def capture_times(start_at_ns: int, frames: int, first: int = 0) -> set[int]:
    """Capture times the node stamps on frames first..first+frames-1 (start_at + i/fps, rounded as capture.py)."""
    return {start_at_ns + round(i * 1e9 / FPS) for i in range(first, first + frames)}


def png_names(out: Path, camera: str) -> list[int]:
    folder = out / camera
    return sorted(int(p.stem) for p in folder.glob("*.png")) if folder.is_dir() else []


def spooled(spool: Path, camera: str) -> list[tuple[int, int]]:
    """(sequence, capture_ns) of the packets in a camera's spool folder."""
    folder = spool / camera
    if not folder.is_dir():
        return []
    return sorted((int(p.name[:20]), int(p.stem.split("-")[1])) for p in folder.glob("*.mvic"))


def assert_delivered_once(cluster: "Cluster", cameras, start_at_ns: int, frames: int) -> dict[str, float]:
    """Every node of ``cameras`` exits 0, each camera's output holds exactly one PNG per capture time and no partial
    file, and every spool is empty. Returns the server's metrics."""
    codes = cluster.wait_nodes_done(cameras)
    assert codes == {c: 0 for c in cameras}, cluster.logs()
    expected = sorted(capture_times(start_at_ns, frames))
    for cam in cameras:
        assert png_names(cluster.out, cam) == expected, f"camera {cam}\n{cluster.logs()}"
        assert not list((cluster.out / cam).glob("*.part")), f"partial files left in {cluster.out / cam}"
        assert spooled(cluster.spool, cam) == [], f"spool of {cam} not empty"
        assert not list((cluster.spool / cam).glob("*.part")), f"partial packets left in {cluster.spool / cam}"
    return cluster.server_stats()


def journal(out: Path) -> dict[str, int]:
    path = out / "acks.json"
    return json.loads(path.read_text())["cameras"] if path.exists() else {}


class Proc:
    """One program in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path, *, pipe_log: bool = False):
        self.name, self.log = name, log
        with open(log, "ab") as f:
            self.popen = subprocess.Popen(
                [sys.executable, "-W", "ignore", "-m", *argv], stdout=subprocess.PIPE if pipe_log else f,
                stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        if pipe_log:
            threading.Thread(target=self._copy_log, name=f"log-{name}", daemon=True).start()

    def _copy_log(self) -> None:
        """The program's output, written to its log by this process (the program's own file writes may be made to
        fail: test_disk_full's RLIMIT_FSIZE emulation)."""
        with open(self.log, "ab", buffering=0) as f:
            f.writelines(self.popen.stdout)  # line by line, as the program writes them

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout:g} s\n{self.tail()}") from None

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = []
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(text)


class Cluster:
    """A fusion server and camera nodes under one tmp folder; ``close`` kills whatever still runs."""

    def __init__(self, root: Path, weights: Path):
        self.root, self.weights = root, weights
        self.out, self.spool = root / "out", root / "spool"
        (root / "logs").mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.grpc_port, self.server_metrics = free_port(), free_port()
        self.node_metrics: dict[str, int] = {}
        self.server: Proc | None = None
        self.servers: list[Proc] = []  # start_servers: a cluster
        self.cluster_ports: list[int] = []
        self.cluster_metrics: list[int] = []
        self.nodes: dict[str, Proc] = {}
        self._starts = 0
        self.pipe_logs = False  # True: programs log through a pipe to this process (see Proc._copy_log)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _spawn(self, name: str, module: str, config: dict) -> Proc:
        self._starts += 1
        path = self.root / f"{name}-{self._starts}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        proc = Proc(name, [module, "--config", str(path)], self.root / "logs" / f"{name}.log", self.root,
                    pipe_log=self.pipe_logs)
        self.procs.append(proc)
        return proc

    # ----------------------------------------------------------------------------------------- server
    def start_server(self, *, cameras=CAMERAS, max_wait_ms: float = 3000.0, **extra) -> Proc:
        config = {
            "listen": self.target, "device": "cpu", "model": MODEL, "weights": str(self.weights),
            "out": str(self.out), "cameras": list(cameras), "log_level": "INFO",
            "grouping": {"tolerance_ms": 0.25e3 / FPS, "max_wait_ms": max_wait_ms},
            "decode": {"workers": 1, "max_inflight_groups": 4, "torch_threads": 1},
            "sinks": {"png": True, "png_name": "capture_ns"},
            "metrics_port": self.server_metrics, "shutdown_grace_s": 5.0, **extra,
        }
        self.server = self._spawn("server", "mvic.fusion_server.cli", config)
        return self.server

    # ------------------------------------------------------------------------------- several servers
    def start_servers(self, count: int, *, cameras=CAMERAS, max_wait_ms: float = 3000.0, refresh_s: float = 1.0,
                      probe_timeout_s: float = 0.5, **extra) -> list[Proc]:
        """``count`` servers of one cluster on loopback sharing ``out`` (``cluster.peers`` = the ``ipv4:`` list of
        them all, ``self`` = each one's address); nodes dial ``cluster_target``. Their metrics ports are
        ``cluster_metrics[i]``; ``start_server`` stays the single-server path."""
        self.cluster_ports = [free_port() for _ in range(count)]
        self.cluster_metrics = [free_port() for _ in range(count)]
        self.servers = []
        for i, (port, metrics) in enumerate(zip(self.cluster_ports, self.cluster_metrics)):
            config = {
                "listen": f"127.0.0.1:{port}", "device": "cpu", "model": MODEL, "weights": str(self.weights),
                "out": str(self.out), "cameras": list(cameras), "log_level": "INFO",
                "grouping": {"tolerance_ms": 0.25e3 / FPS, "max_wait_ms": max_wait_ms},
                "decode": {"workers": 1, "max_inflight_groups": 4, "torch_threads": 1},
                "sinks": {"png": True, "png_name": "capture_ns"},
                "metrics_port": metrics, "shutdown_grace_s": 5.0,
                "cluster": {"peers": self.cluster_target, "self": f"127.0.0.1:{port}", "refresh_s": refresh_s,
                            "probe_timeout_s": probe_timeout_s},
                **extra,
            }
            self.servers.append(self._spawn(f"server{i}", "mvic.fusion_server.cli", config))
        return self.servers

    @property
    def cluster_addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.cluster_ports]

    @property
    def cluster_target(self) -> str:
        """The one name of every server, as nodes and servers use it (a static gRPC address list)."""
        return "ipv4:" + ",".join(self.cluster_addresses)

    def wait_servers_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        for proc, port in zip(self.servers, self.cluster_metrics):
            self.wait_for(lambda p=port: self._metric(p, "mvic_server_model_loaded") == 1.0, timeout,
                          f"{proc.name} to load its model", watch=[proc])

    def cluster_stats(self, index: int) -> dict[str, float]:
        return scrape(self.cluster_metrics[index])

    def wait_server_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        self.wait_for(lambda: self._metric(self.server_metrics, "mvic_server_model_loaded") == 1.0,
                      timeout, "the server to load its model", watch=[self.server])

    def server_stats(self) -> dict[str, float]:
        return scrape(self.server_metrics)

    # ------------------------------------------------------------------------------------------ nodes
    def start_node(self, camera: str, *, start_at_ns: int, frames: int, link: dict | None = None,
                   server: str | None = None, scene_cameras: int = len(CAMERAS), **extra) -> Proc:
        """``server``: the address to dial instead of the server's own (a ``faultproxy.FaultProxy`` in between, or
        ``cluster_target``); ``scene_cameras``: cameras of the synthetic scene (C1..Cn); ``extra``: more node.yaml
        keys (``tls={...}``, ``group=...``)."""
        self.node_metrics.setdefault(camera, free_port())
        config = {
            "camera": camera, "server": server or self.target, "log_level": "INFO",
            "source": {"uri": "", "fps": FPS, "frames": frames, "start_at_ns": start_at_ns,
                       "synthetic": {"seed": SEED, "cameras": scene_cameras, "height": HEIGHT, "width": WIDTH}},
            "encode": {"model": MODEL, "weights": str(self.weights), "rate": 2, "threads": 1, "policy": "every"},
            "spool": {"dir": str(self.spool)},
            "link": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0, "drain_timeout_s": 5.0,
                     "finish_timeout_s": RUN_TIMEOUT_S, **(link or {})},
            "metrics": {"port": self.node_metrics[camera], "host": "127.0.0.1"},
            **extra,
        }
        self.nodes[camera] = self._spawn(camera, "mvic.node.cli", config)
        return self.nodes[camera]

    def node_stats(self, camera: str) -> dict[str, float]:
        return scrape(self.node_metrics[camera])

    def wait_nodes_done(self, cameras, timeout: float = RUN_TIMEOUT_S) -> dict[str, int]:
        """Wait for the nodes to exit (they do once every frame is acked); their exit codes."""
        procs = [self.nodes[c] for c in cameras]
        self.wait_for(lambda: not any(p.alive for p in procs), timeout, f"nodes {', '.join(cameras)} to finish",
                      watch=[self.server] if self.server else [])
        return {c: self.nodes[c].popen.returncode for c in cameras}

    # ------------------------------------------------------------------------------------------ waits
    @staticmethod
    def _metric(port: int, name: str) -> float | None:
        try:
            return scrape(port).get(name)
        except OSError:
            return None

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str, *, watch=(), poll: float = 0.1):
        """Poll ``predicate`` until true; fail (with logs) on timeout or when a watched process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for proc in watch:
                if proc is not None and not proc.alive:
                    raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}\n"
                                         f"{self.logs()}")
            time.sleep(poll)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{self.logs()}")

    def logs(self) -> str:
        seen, parts = set(), []
        for proc in self.procs:
            if proc.log not in seen:
                seen.add(proc.log)
                parts.append(proc.tail())
        return "\n".join(parts)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.signal(signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


class RawCamera:
    """A bare gRPC camera client on the ``mvic.shared.rpc`` stubs: sends what a test says, records what comes back.

    No spool, no reconnect, no checks: the point is to send what a real node never would.
    """

    def __init__(self, target: str, hello, *, metadata: tuple[tuple[str, str], ...] = (), timeout: float = 60.0):
        import queue
        import threading

        import grpc

        from mvic.shared.rpc import channel_options, mvic_pb2 as pb
        from mvic.shared.rpc.mvic_pb2_grpc import FusionStub

        self._pb = pb
        self._out: queue.Queue = queue.Queue()
        self.received: queue.Queue = queue.Queue()  # ServerMessage, then the final grpc.RpcError or None
        self.channel = grpc.insecure_channel(target, options=channel_options())
        self._out.put(pb.NodeMessage(hello=hello))
        self.call = FusionStub(self.channel).Stream(self._requests(), metadata=metadata, timeout=timeout)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self):
        while (message := self._out.get()) is not None:
            yield message

    def _read(self) -> None:
        import grpc

        try:
            for message in self.call:
                self.received.put(message)
            self.received.put(None)
        except grpc.RpcError as exc:
            self.received.put(exc)

    def send_packet(self, sequence: int, capture_ns: int, bitstream: bytes) -> None:
        self._out.put(self._pb.NodeMessage(packet=self._pb.ViewPacket(
            sequence=sequence, capture_ns=capture_ns, sent_ns=time.time_ns(), bitstream=bitstream)))

    def next(self, timeout: float = 30.0):
        """The next ServerMessage; the stream's end as a grpc.RpcError (or None for OK). Fails on timeout."""
        import queue

        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer from the server within {timeout:g} s") from None

    def close(self) -> None:
        self._out.put(None)  # half-close
        self.call.cancel()
        self.channel.close()
