"""A full disk (issue 13) under the node's spool and under the server's output: nothing is acknowledged that is not
on disk, and nothing is lost once space returns.

The folder is made size-limited by the first method that works here (``MVIC_TEST_DISK=tmpfs|fsize`` forces one):

    tmpfs   (root with mount rights) a small tmpfs under the test's tmp folder. Full: a ballast file takes every
            free page, and a filler thread takes back whatever the program frees (acks delete spooled packets), so
            its writes fail with ENOSPC. Space returns: the ballast is deleted.
    fsize   (anywhere else, e.g. a container without mount rights) the program's RLIMIT_FSIZE is lowered to 0 with
            prlimit, so every write that grows a file fails with EFBIG, as ENOSPC would (CPython ignores SIGXFSZ);
            its log goes through a pipe to this process meanwhile. Space returns: the limit is lifted.

The test is skipped, saying why, only when neither works. While the disk is full, the acks the server sends (its
``acked_sequence`` metric, the journal, each node's ``acked_sequence``) never cover a frame whose PNG is missing;
after it returns, every frame is written exactly once and every spool drains.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.harness import FPS, assert_delivered_once, journal, png_names

LEAD_S = 10.0  # the schedule starts once every node is up, so the disk fills mid-stream
CAMERAS = ("C1", "C2")  # two nodes: the disk is what is tested, and three processes start faster than four
FRAMES = int(8 * FPS)
TMPFS_BYTES = 16 << 20  # room for the PNGs (~10 KB each), journal and spools of a test, but not for much more
PAGE = 4096


# ------------------------------------------------------------------------------------------- size-limited disks
class TmpfsDisk:
    """A tmpfs of ``size`` bytes at ``path``; ``fill`` / ``free`` toggle a full disk."""

    method = "tmpfs"

    def __init__(self, path: Path, size: int = TMPFS_BYTES):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True,
                       capture_output=True)
        self._ballast = path / "ballast"
        self._stop = threading.Event()
        self._filler: threading.Thread | None = None

    def attach(self, proc) -> None:
        """Every process writing under ``path`` is affected: nothing to do."""

    def fill(self) -> None:
        self._top_up()
        self._stop.clear()
        self._filler = threading.Thread(target=self._keep_full, name="disk-filler", daemon=True)
        self._filler.start()

    def free(self) -> None:
        self._stop.set()
        if self._filler is not None:
            self._filler.join(10)
        self._ballast.unlink(missing_ok=True)

    def close(self) -> None:
        self.free()
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)

    def _keep_full(self) -> None:
        while not self._stop.wait(0.01):
            self._top_up()

    def _top_up(self) -> None:
        """Write pages to the ballast until the tmpfs has none left."""
        fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * PAGE)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)


class FsizeDisk:
    """Emulation: the attached processes' RLIMIT_FSIZE is 0 while "full"."""

    method = "fsize"

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._pids: list[int] = []

    def attach(self, proc) -> None:
        self._pids.append(proc.popen.pid)

    def fill(self) -> None:
        self._limit(0)

    def free(self) -> None:
        self._limit(resource.RLIM_INFINITY)

    def close(self) -> None:
        self._pids.clear()

    def _limit(self, soft: int) -> None:
        for pid in self._pids:
            try:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))
            except ProcessLookupError:
                pass  # it exited; the test says so


def _tmpfs_problem(probe: Path) -> str | None:
    if os.geteuid() != 0:
        return "not root"
    probe.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mount -t tmpfs failed ({getattr(exc, 'stderr', b'') or exc!s})".strip()
    subprocess.run(["umount", str(probe)], check=False, capture_output=True)
    return None


_FSIZE_PROBE = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
try:
    with open(sys.argv[1], "wb") as f:
        f.write(b"x")
except OSError as exc:
    sys.exit(0 if exc.errno == 27 else 2)  # EFBIG
sys.exit(3)
"""


def _fsize_problem(probe: Path) -> str | None:
    if not hasattr(resource, "prlimit"):
        return "resource.prlimit is not available"
    probe.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-c", _FSIZE_PROBE, str(probe / "fsize-probe")], check=False,
                            capture_output=True, timeout=60)
    return None if result.returncode == 0 else f"a write past RLIMIT_FSIZE did not fail with EFBIG ({result})"


@pytest.fixture
def disk(cluster, tmp_path):
    """A size-limited folder (see the module docstring); the cluster is stopped before it goes away."""
    wanted = os.environ.get("MVIC_TEST_DISK", "")
    problems = {}
    made = None
    for method, problem, make in (("tmpfs", _tmpfs_problem, TmpfsDisk), ("fsize", _fsize_problem, FsizeDisk)):
        if wanted and method != wanted:
            continue
        problems[method] = problem(tmp_path / f"probe-{method}")
        if problems[method] is None:
            made = make(tmp_path / "disk")
            break
    if made is None:
        pytest.skip("no way to make a size-limited folder here: " +
                    "; ".join(f"{m}: {p}" for m, p in problems.items()))
    if made.method == "fsize":
        cluster.pipe_logs = True  # a program whose writes fail must still be able to log
    yield made
    cluster.close()
    made.close()


# ----------------------------------------------------------------------------------------------------- checks
def _stored_through(out: Path, camera: str, start_at: int) -> int:
    """Highest n such that the PNGs of sequences 1..n are on disk (policy every: sequence = frame index + 1)."""
    have = set(png_names(out, camera))
    n = 0
    while start_at + round(n * 1e9 / FPS) in have:
        n += 1
    return n


def _server_metric(cluster, name: str) -> float:
    try:
        return cluster.server_stats().get(name, 0.0)
    except OSError:
        return 0.0


def _node_metric(cluster, camera: str, name: str) -> float:
    try:
        return cluster.node_stats(camera).get(name, 0.0)
    except OSError:  # not up yet, or gone (the caller checks that)
        return 0.0


def _check_acks_on_disk(cluster, start_at: int) -> int:
    """Assert that no ack (server metric, journal, node) covers a frame whose PNG is missing; the acks seen."""
    seen = 0
    # acks first, files second: a file written meanwhile can only make the check easier to pass, never hide a bug
    acks = {c: [journal(cluster.out).get(c, 0),
                _server_metric(cluster, f'mvic_server_acked_sequence{{camera="{c}"}}'),
                _node_metric(cluster, c, "mvic_node_acked_sequence")] for c in CAMERAS}
    for cam, values in acks.items():
        on_disk = _stored_through(cluster.out, cam, start_at)
        assert max(values) <= on_disk, \
            f"{cam}: acked up to {values} (journal, server, node) but only 1..{on_disk} are on disk\n{cluster.logs()}"
        seen += max(values)
    return seen


def _start(cluster, disk) -> int:
    server = cluster.start_server(cameras=CAMERAS)
    start_at = time.time_ns() + int(LEAD_S * 1e9)
    for cam in CAMERAS:
        cluster.start_node(cam, start_at_ns=start_at, frames=FRAMES)
    cluster.wait_for(lambda: all(png_names(cluster.out, c) for c in CAMERAS), 90, "a first frame of every camera",
                     watch=[server, *cluster.nodes.values()], poll=0.05)
    return start_at


def _full_for_a_while(cluster, disk, start_at: int, evidence, what: str, timeout: float = 30.0) -> None:
    """Keep the disk full until ``evidence()`` holds (the programs met it), checking the acks all along."""
    disk.fill()
    try:
        deadline = time.monotonic() + timeout
        while not evidence():
            _check_acks_on_disk(cluster, start_at)
            for proc in (cluster.server, *cluster.nodes.values()):
                assert proc.alive, f"{proc.name} exited ({proc.popen.returncode}) on a full disk\n{cluster.logs()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:g} s of a full disk\n{cluster.logs()}"
            time.sleep(0.2)
        _check_acks_on_disk(cluster, start_at)
    finally:
        disk.free()


def _assert_every_frame_once(cluster, start_at: int) -> dict[str, float]:
    stats = assert_delivered_once(cluster, CAMERAS, start_at, FRAMES)
    for cam in CAMERAS:
        assert stats[f'mvic_server_frames_written_total{{camera="{cam}"}}'] == FRAMES, \
            f"{cam}: a frame was written twice or not at all; {stats}\n{cluster.logs()}"
    assert journal(cluster.out) == {c: FRAMES for c in CAMERAS}
    return stats


# ------------------------------------------------------------------------------------------------------ tests
def test_server_output_disk_full(cluster, disk):
    """PNGs and the ack journal cannot be written: no ack moves; the nodes keep their packets and resend them."""
    cluster.out = disk.path / "out"
    start_at = _start(cluster, disk)
    disk.attach(cluster.server)

    def refused_and_backlogged() -> bool:
        backlog = [_node_metric(cluster, c, "mvic_node_spool_packets") for c in CAMERAS]
        return _server_metric(cluster, "mvic_server_sink_errors_total") >= 3 and min(backlog) >= 4

    _full_for_a_while(cluster, disk, start_at, refused_and_backlogged, "failed writes and a backlog in every spool")
    stats = _assert_every_frame_once(cluster, start_at)
    assert stats["mvic_server_sink_errors_total"] >= 3


def test_node_spool_disk_full(cluster, disk):
    """Packets cannot be spooled: the nodes keep running, lose nothing, and spool again once space returns."""
    cluster.spool = disk.path / "spool"
    start_at = _start(cluster, disk)
    for cam in CAMERAS:
        disk.attach(cluster.nodes[cam])
    captured = {c: _node_metric(cluster, c, "mvic_node_frames_captured_total") for c in CAMERAS}

    def captured_while_full() -> bool:  # frames went on arriving while nothing could be spooled
        return all(_node_metric(cluster, c, "mvic_node_frames_captured_total") >= min(captured[c] + 4, FRAMES)
                   for c in CAMERAS)

    _full_for_a_while(cluster, disk, start_at, captured_while_full, "frames captured by every node")
    _assert_every_frame_once(cluster, start_at)
