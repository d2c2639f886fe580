"""The on-disk spool: every coded packet waits here, durably, until the server acknowledges it. Third hop.

Hop before: ``mvic.node.encoder.EncoderWorker`` reserves a sequence number and ``put``s the packed view.
Hop after: ``mvic.node.link.Link`` reads packets in sequence order, sends them, and calls ``ack``/``reject``.

Layout, one folder per camera (``<dir>/<camera>/``)::

    00000000000000000042-1732284000123456789.mvic   sequence (20 digits) - capture_ns; the packed bitstream
    state.json                                      {"last_sequence": N, "acked_sequence": M, "schedule": ...}
    .lock                                           flock'ed by the running node; a second node for the camera fails

Durability: a packet is written to ``name.part``, fsync'ed, renamed, and the folder fsync'ed before ``put`` returns,
so a packet the link may send is on disk. ``state.json`` is written the same way.

Resume semantics (node restart): the next sequence is one above the highest of ``state.last_sequence``, every
spooled packet's sequence and the acked sequence, so numbering never goes back, even after every packet was acked
and deleted (``state.json`` is written before a deletion could remove the highest sequence). On open, leftover
``.part`` files are removed, each packet is checked (it must unpack, name this camera and its file's sequence, and
match the node's model and weights), and a packet that fails is deleted with an ERROR (reason "corrupt" or
"stale_model"). When the server's Welcome reports a higher acked sequence than the node knows (the spool was
wiped), the numbering jumps above it.

Capture position: ``state.json`` also names the capture schedule of the run (``schedule``, from
``mvic.node.capture.schedule_key``), the last sequence before it began and the highest ``capture_ns`` spooled under
it. Opened with the same schedule, ``resumed_capture_ns`` is the newest of that and the schedule's packets still on
disk, and capture goes on after it; a packet is never deleted before ``state.json`` covers its capture time.

Bounded in bytes (``max_bytes``), with an explicit policy when a new packet does not fit:
    drop-oldest (default)  the oldest unacked packets are deleted until it fits; counted as
                           ``mvic_node_frames_dropped_total{reason="spool_full"}`` and logged at ERROR (at most every
                           10 s, with the count). The newest frames survive a long outage.
    block                  ``put`` waits for acks to free room, so the encoder and then capture stop (see the
                           handoff policy); nothing already spooled is lost. While the node stops, a packet that
                           still does not fit is dropped (counted, ERROR).
"""

from __future__ import annotations

import bisect
import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mvic.node.metrics import NodeMetrics
from mvic.shared.bitstream import ViewHeader, unpack
from mvic.shared.errors import BitstreamError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{20})-(\d{1,20})\.mvic$")
STATE_FILE = "state.json"
STATE_VERSION = 2


class SpoolError(RuntimeError):
    """The spool folder cannot be used (locked by another node, not writable)."""


@dataclass(frozen=True)
class SpooledPacket:
    """One packet on disk, waiting for its ack."""

    sequence: int
    capture_ns: int
    size: int  # bytes of the packed bitstream

    @property
    def filename(self) -> str:
        return f"{self.sequence:020d}-{self.capture_ns}.mvic"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all, and make it survive a power cut: temp file, fsync, rename, fsync dir."""
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Spool:
    """Durable, byte-bounded, sequence-ordered store of unacked packets for one camera. Thread-safe."""

    def __init__(self, root: str | Path, camera: str, max_bytes: int, when_full: str, metrics: NodeMetrics,
                 keep: Callable[[ViewHeader], str | None] | None = None, schedule: dict | None = None):
        if when_full not in ("drop-oldest", "block"):
            raise ValueError(f"when_full must be 'drop-oldest' or 'block', got {when_full!r}")
        self.folder = Path(root) / camera
        self.camera = camera
        self.max_bytes = max_bytes
        self.when_full = when_full
        self._metrics = metrics
        self._keep = keep  # returns why a recovered packet must go (another model...), or None to keep it
        self._cond = threading.Condition()
        self._seqs: list[int] = []  # increasing
        self._packets: dict[int, SpooledPacket] = {}
        self._bytes = 0
        self._reserved = 0  # highest sequence handed out
        self._persisted_last = 0  # last_sequence in state.json
        self._acked = 0
        self._schedule = schedule  # the capture schedule of this run (None: nothing to resume)
        self._schedule_since = 0  # packets above this sequence belong to it
        self._last_capture = 0  # highest capture_ns spooled under it
        self._persisted_capture = 0
        self.resumed_capture_ns: int | None = None  # set by open(): where the previous run left the schedule
        self._lock_fd: int | None = None
        self._full_drops = 0
        self._full_logged_at = 0.0

    # --------------------------------------------------------------------------------------- open / close
    def open(self) -> None:
        """Lock the folder and recover what a previous run left; afterwards ``next_sequence`` continues."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SpoolError(f"spool folder {self.folder} is not usable: {exc}; check --spool and permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolError(f"spool {self.folder} is locked by another running mvic-node for camera {self.camera}; "
                             "stop it or give this node another --spool") from None
        self._lock_fd = fd
        self._recover()

    def close(self) -> None:
        with self._cond:
            self._write_state()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _recover(self) -> None:
        state = self._read_state()
        last = int(state.get("last_sequence", 0))
        self._acked = int(state.get("acked_sequence", 0))
        found: list[tuple[int, int, Path]] = []
        for path in self.folder.iterdir():
            if path.name.endswith(".part"):
                path.unlink(missing_ok=True)  # a write that never completed: its packet was never sent
                continue
            m = _NAME.match(path.name)
            if m:
                found.append((int(m.group(1)), int(m.group(2)), path))
        found.sort()
        self._reserved = max([last, self._acked] + [seq for seq, _, _ in found])
        same = self._schedule is not None and state.get("schedule") == self._schedule
        self._schedule_since = int(state.get("schedule_since_sequence", 0)) if same else self._reserved
        self._last_capture = int(state.get("last_capture_ns", 0)) if same else 0
        self._last_capture = max([self._last_capture] + [c for seq, c, _ in found if seq > self._schedule_since])
        self.resumed_capture_ns = self._last_capture or None
        self._write_state()  # before any deletion below can remove the highest sequence
        for seq, capture_ns, path in found:
            why, reason = self._check(path, seq)
            if why:
                log.error("spool: deleting %s: %s", path.name, why)
                path.unlink(missing_ok=True)
                self._metrics.dropped(reason)
                continue
            packet = SpooledPacket(seq, capture_ns, path.stat().st_size)
            self._seqs.append(seq)
            self._packets[seq] = packet
            self._bytes += packet.size
        with self._cond:
            self._make_room(0)
            self._update_gauges()
        log.info("spool %s: %d unacked packet(s), %d bytes; next sequence %d", self.folder, len(self._seqs),
                 self._bytes, self._reserved + 1)

    def _check(self, path: Path, seq: int) -> tuple[str | None, str]:
        try:
            header = unpack(path.read_bytes()).header
        except (BitstreamError, OSError) as exc:
            return f"unreadable packet ({exc})", "corrupt"
        if header.sequence != seq or header.camera_id != self.camera:
            return (f"packet says camera {header.camera_id!r} sequence {header.sequence}, file name says "
                    f"{self.camera!r} {seq}"), "corrupt"
        if seq <= self._acked:
            return None, ""  # acked before the crash: removed by the first ack or Welcome
        why = self._keep(header) if self._keep else None
        return (why, "stale_model") if why else (None, "")

    def _read_state(self) -> dict:
        path = self.folder / STATE_FILE
        if not path.exists():
            return {}
        try:
            state = json.loads(path.read_text())
            if state.get("camera") not in (None, self.camera):
                raise ValueError(f"it belongs to camera {state.get('camera')!r}")
            return state
        except (ValueError, OSError) as exc:
            log.error("spool: ignoring %s (%s); sequence numbers continue from the spooled packets", path, exc)
            return {}

    def _write_state(self) -> None:
        state = {"version": STATE_VERSION, "camera": self.camera, "last_sequence": self._reserved,
                 "acked_sequence": self._acked, "schedule": self._schedule,
                 "schedule_since_sequence": self._schedule_since, "last_capture_ns": self._last_capture}
        write_durable(self.folder / STATE_FILE, json.dumps(state, sort_keys=True).encode())
        self._persisted_last = self._reserved
        self._persisted_capture = self._last_capture

    # ------------------------------------------------------------------------------ encoder side
    def next_sequence(self) -> int:
        """Reserve the next sequence number (unused numbers leave gaps, which the protocol allows)."""
        with self._cond:
            self._reserved += 1
            self._metrics.last_sequence.set(self._reserved)
            return self._reserved

    def put(self, sequence: int, capture_ns: int, data: bytes, stop: threading.Event) -> bool:
        """Store one packet durably; False when it was dropped instead (too big, or no room while stopping)."""
        packet = SpooledPacket(sequence, capture_ns, len(data))
        if packet.size > self.max_bytes:
            log.error("spool: packet %d of %d bytes is larger than the whole spool (%d bytes); dropped. Raise "
                      "--spool-max-bytes or lower --rate", sequence, packet.size, self.max_bytes)
            self._metrics.dropped("spool_full")
            return False
        with self._cond:
            if self.when_full == "block":
                while self._bytes + packet.size > self.max_bytes and not stop.is_set():
                    self._cond.wait(0.2)
            if self._bytes + packet.size > self.max_bytes and self.when_full == "block":
                self._full(1, f"node is stopping and the spool is full; packet {sequence} dropped")
                return False
            self._make_room(packet.size)
        write_durable(self.folder / packet.filename, data)
        with self._cond:
            index = bisect.bisect_left(self._seqs, sequence)
            self._seqs.insert(index, sequence)
            self._packets[sequence] = packet
            self._bytes += packet.size
            self._last_capture = max(self._last_capture, capture_ns)
            self._update_gauges()
            self._cond.notify_all()
        return True

    def _make_room(self, size: int) -> None:
        """Drop the oldest packets until ``size`` more bytes fit (lock held)."""
        dropped = 0
        while self._seqs and self._bytes + size > self.max_bytes:
            self._remove(self._seqs[0])
            dropped += 1
        if dropped:
            self._full(dropped, f"spool over {self.max_bytes} bytes; dropped the {dropped} oldest unacked packet(s) "
                                "(policy drop-oldest): the server is unreachable or too slow")

    def _full(self, count: int, message: str) -> None:
        self._metrics.dropped("spool_full", count)
        self._full_drops += count
        now = time.monotonic()
        if now - self._full_logged_at >= 10.0:
            log.error("spool: %s; %d packet(s) lost to a full spool so far", message, self._full_drops)
            self._full_logged_at = now

    # ---------------------------------------------------------------------------------- link side
    def wait_after(self, sequence: int, timeout: float) -> SpooledPacket | None:
        """The first packet above ``sequence``, waiting up to ``timeout`` seconds for one to be put."""
        with self._cond:
            deadline = time.monotonic() + timeout
            while True:
                index = bisect.bisect_right(self._seqs, sequence)
                if index < len(self._seqs):
                    return self._packets[self._seqs[index]]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def read(self, sequence: int) -> bytes | None:
        """The packet's bytes, or None when it was deleted meanwhile (acked, rejected or dropped)."""
        with self._cond:
            packet = self._packets.get(sequence)
        if packet is None:
            return None
        try:
            return (self.folder / packet.filename).read_bytes()
        except FileNotFoundError:
            return None

    def count_through(self, sequence: int) -> int:
        """Spooled packets with a sequence <= ``sequence`` (the link's in-flight count)."""
        with self._cond:
            return bisect.bisect_right(self._seqs, sequence)

    def ack(self, acked_sequence: int) -> list[SpooledPacket]:
        """Cumulative ack: delete every packet up to ``acked_sequence``; returns them."""
        with self._cond:
            removed = []
            while self._seqs and self._seqs[0] <= acked_sequence:
                removed.append(self._remove(self._seqs[0]))
            if acked_sequence > self._acked:
                self._acked = acked_sequence
                self._metrics.acked_sequence.set(acked_sequence)
            self._update_gauges()
            self._cond.notify_all()
            return removed

    def discard(self, sequence: int, reason: str) -> SpooledPacket | None:
        """Delete one packet the server will never take (PacketError, too large); counted under ``reason``."""
        with self._cond:
            if sequence not in self._packets:
                return None
            packet = self._remove(sequence)
            self._metrics.dropped(reason)
            self._update_gauges()
            self._cond.notify_all()
            return packet

    def server_acked(self, acked_sequence: int) -> list[SpooledPacket]:
        """A Welcome's acked sequence: ack up to it, and number new packets above it."""
        with self._cond:
            if acked_sequence > self._reserved:
                log.warning("spool: the server has stored this camera up to sequence %d but the node only reached "
                            "%d (spool wiped?); numbering continues at %d", acked_sequence, self._reserved,
                            acked_sequence + 1)
                self._reserved = acked_sequence
                self._write_state()
            return self.ack(acked_sequence)

    def _remove(self, sequence: int) -> SpooledPacket:
        """Forget and delete one packet (lock held). state.json first when it does not cover the packet's sequence
        or capture time yet."""
        packet = self._packets.pop(sequence)
        if sequence > self._persisted_last or packet.capture_ns > self._persisted_capture:
            self._write_state()
        del self._seqs[bisect.bisect_left(self._seqs, sequence)]
        self._bytes -= packet.size
        (self.folder / packet.filename).unlink(missing_ok=True)
        return packet

    def _update_gauges(self) -> None:
        self._metrics.spool_bytes.set(self._bytes)
        self._metrics.spool_packets.set(len(self._seqs))
        self._metrics.last_sequence.set(self._reserved)

    # --------------------------------------------------------------------------------------- state
    @property
    def pending(self) -> int:
        """Unacked packets in the spool."""
        with self._cond:
            return len(self._seqs)

    @property
    def bytes(self) -> int:
        with self._cond:
            return self._bytes

    @property
    def acked_sequence(self) -> int:
        with self._cond:
            return self._acked

    @property
    def last_sequence(self) -> int:
        with self._cond:
            return self._reserved

    def sequences(self) -> list[int]:
        with self._cond:
            return list(self._seqs)
