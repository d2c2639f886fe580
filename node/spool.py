"""The on-disk spool: every coded packet waits here, durably, until the server acknowledges it. Fourth hop.

Hop before: ``mvic.node.encoder.EncoderWorker`` reserves a sequence number and ``put``s the packed view.
Hop after: ``mvic.node.link.Link`` reads packets in sequence order, sends them (``mark_sent``), and calls ``ack`` /
``discard``.

Layout, one folder per camera (``<dir>/<safe_name(camera)>/``, ``mvic.shared.fileio.safe_name``)::

    00000000000000000042-1732284000123456789.mvic   sequence (20 digits) - capture_ns; the packed bitstream
    state.json                                      {"last_sequence": N, "acked_sequence": M, "schedule": ...}
    .lock                                           flock'ed by the running node; a second node for the camera fails

Durability: a packet is written with ``mvic.shared.fileio.write_atomic(durable=True)`` (``name.part``, fsync,
rename, fsync of the folder) before ``put`` returns, so a packet the link may send is on disk. ``state.json``
(``SpoolState``) is written the same way; a state.json of another camera stops the node (``SpoolError``) instead of
letting it delete that camera's packets.

Resume semantics (node restart): the next sequence is one above the highest of ``state.last_sequence``, every
spooled packet's sequence and the acked sequence, so numbering never goes back, even after every packet was acked
and deleted (``state.json`` is written before a deletion could remove the highest sequence). On open, leftover
``.part`` files are removed, each packet is checked (it must unpack, name this camera and its file's sequence, and
match the node's model and weights), and a packet that fails is deleted with an ERROR (reason "corrupt" or
"stale_model").

Acknowledgements delete only what may have reached a server: ``ack(n)`` deletes every packet up to ``n`` when ``n``
is at most ``sent_sequence`` (the highest sequence the link has handed to gRPC, and every sequence a previous run
numbered, since it may have sent them); above that it raises ``ImplausibleAckError`` and changes nothing. So a
server that claims more than it can have (a Welcome "stored up to 2**64-1", another node with the same camera id)
can neither renumber this node nor delete packets it never received.

Capture position: ``state.json`` also names the capture schedule of the run (``schedule``, a
``mvic.node.capture.CaptureSchedule``), the last sequence before it began and the highest ``capture_ns`` spooled under
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
import errno
import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mvic.node.capture import CaptureSchedule
from mvic.node.errors import ImplausibleAckError
from mvic.node.errors import SpoolError as SpoolError  # re-exported: raised by open()
from mvic.node.metrics import NodeMetrics
from mvic.shared.bitstream import ViewHeader, unpack
from mvic.shared.errors import BitstreamError
from mvic.shared.fileio import safe_name, write_atomic
from mvic.shared.ids import display

log = logging.getLogger(__name__)
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a write that space (or a raised limit) would let through

_NAME = re.compile(r"^(\d{20})-(\d{1,20})\.mvic$")
STATE_FILE = "state.json"
STATE_VERSION = 2


@dataclass(frozen=True)
class SpooledPacket:
    """One packet on disk, waiting for its ack."""

    sequence: int
    capture_ns: int
    size: int  # bytes of the packed bitstream

    @property
    def filename(self) -> str:
        return f"{self.sequence:020d}-{self.capture_ns}.mvic"


@dataclass(frozen=True)
class SpoolState:
    """``state.json``: what a restart needs besides the packets themselves."""

    last_sequence: int = 0  # highest sequence handed out
    acked_sequence: int = 0  # highest sequence the server acknowledged
    schedule: CaptureSchedule | None = None  # the capture schedule of the run that wrote it
    schedule_since_sequence: int = 0  # packets above this sequence belong to that schedule
    last_capture_ns: int = 0  # highest capture_ns spooled under that schedule

    def to_json(self, camera: str) -> bytes:
        body: dict[str, Any] = {"version": STATE_VERSION, "camera": camera, **asdict(self)}
        body["schedule"] = self.schedule.to_json() if self.schedule else None
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_json(cls, text: str) -> tuple[SpoolState, str | None]:
        """The state and the camera it names; ValueError when it is not a state file."""
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        try:
            state = cls(int(body.get("last_sequence", 0)), int(body.get("acked_sequence", 0)),
                        CaptureSchedule.from_json(body.get("schedule")), int(body.get("schedule_since_sequence", 0)),
                        int(body.get("last_capture_ns", 0)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a field is not a number ({exc})") from None
        camera = body.get("camera")
        return state, camera if isinstance(camera, str) else None


class Spool:
    """Durable, byte-bounded, sequence-ordered store of unacked packets for one camera. Thread-safe."""

    def __init__(self, root: str | Path, camera: str, max_bytes: int, when_full: str, metrics: NodeMetrics,
                 keep: Callable[[ViewHeader], str | None] | None = None, schedule: CaptureSchedule | None = None):
        if when_full not in ("drop-oldest", "block"):
            raise ValueError(f"when_full must be 'drop-oldest' or 'block', got {when_full!r}")
        self.folder = Path(root) / safe_name(camera)
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
        self._sent = 0  # highest sequence that may have reached a server (mark_sent; every number of earlier runs)
        self._schedule = schedule  # the capture schedule of this run (None: nothing to resume)
        self._schedule_since = 0  # packets above this sequence belong to it
        self._last_capture = 0  # highest capture_ns spooled under it
        self._persisted_capture = 0
        self.resumed_capture_ns: int | None = None  # set by open(): where the previous run left the schedule
        self._lock_fd: int | None = None
        self._listeners: list[Callable[[], None]] = []  # told after every change (the link's wake-up)
        self._full_drops = 0
        self._full_logged_at = 0.0
        self._disk_full_logged_at = float("-inf")

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
        try:
            self._recover()
        except SpoolError:
            os.close(fd)
            self._lock_fd = None
            raise

    def close(self) -> None:
        with self._cond:
            try:
                self._write_state()
            except OSError as exc:  # state.json is rebuilt from the packets at the next open; nothing is lost
                log.error("spool: could not save %s at exit (%s); the next start recovers it from the packets",
                          STATE_FILE, exc)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _recover(self) -> None:
        state = self._read_state()
        self._acked = state.acked_sequence
        found: list[SpooledPacket] = []  # size 0 until checked
        for path in self.folder.iterdir():
            if path.name.endswith(".part"):
                path.unlink(missing_ok=True)  # a write that never completed: its packet was never sent
                continue
            m = _NAME.match(path.name)
            if m:
                found.append(SpooledPacket(int(m.group(1)), int(m.group(2)), 0))
        found.sort(key=lambda packet: packet.sequence)
        self._reserved = max([state.last_sequence, self._acked] + [p.sequence for p in found])
        self._sent = self._reserved  # an earlier run may have sent any number it gave out
        same = self._schedule is not None and state.schedule == self._schedule
        self._schedule_since = state.schedule_since_sequence if same else self._reserved
        self._last_capture = state.last_capture_ns if same else 0
        self._last_capture = max([self._last_capture] +
                                 [p.capture_ns for p in found if p.sequence > self._schedule_since])
        self.resumed_capture_ns = self._last_capture or None
        self._write_state()  # before any deletion below can remove the highest sequence
        for found_packet in found:
            path = self.folder / found_packet.filename
            why, reason = self._check(path, found_packet.sequence)
            if why:
                log.error("spool: deleting %s: %s", path.name, why)
                path.unlink(missing_ok=True)
                self._metrics.dropped(reason)
                continue
            packet = SpooledPacket(found_packet.sequence, found_packet.capture_ns, path.stat().st_size)
            self._seqs.append(packet.sequence)
            self._packets[packet.sequence] = packet
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
            return (f"packet says camera {display(header.camera_id)} sequence {header.sequence}, file name says "
                    f"{display(self.camera)} {seq}"), "corrupt"
        if seq <= self._acked:
            return None, ""  # acked before the crash: removed by the first ack or Welcome
        why = self._keep(header) if self._keep else None
        return (why, "stale_model") if why else (None, "")

    def _read_state(self) -> SpoolState:
        path = self.folder / STATE_FILE
        if not path.exists():
            return SpoolState()
        try:
            state, camera = SpoolState.from_json(path.read_text())
        except (ValueError, OSError) as exc:
            log.error("spool: ignoring %s (%s); sequence numbers continue from the spooled packets", path, exc)
            return SpoolState()
        if camera not in (None, self.camera):
            raise SpoolError(f"spool folder {self.folder} holds the state of camera {display(camera)}, not "
                             f"{display(self.camera)}; give this node another --spool (spool.dir) so that neither "
                             "camera's packets are lost")
        return state

    def _write_state(self) -> None:
        state = SpoolState(self._reserved, self._acked, self._schedule, self._schedule_since, self._last_capture)
        write_atomic(self.folder / STATE_FILE, state.to_json(self.camera), durable=True)
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
        if not self._write_packet(packet, data, stop):
            return False
        with self._cond:
            index = bisect.bisect_left(self._seqs, sequence)
            self._seqs.insert(index, sequence)
            self._packets[sequence] = packet
            self._bytes += packet.size
            self._last_capture = max(self._last_capture, capture_ns)
            self._update_gauges()
            self._changed()
        return True

    def _write_packet(self, packet: SpooledPacket, data: bytes, stop: threading.Event) -> bool:
        """Write one packet durably. A full disk (or quota, or file-size limit) is waited out: the encoder, then
        capture, stop behind it (the handoff policy counts what capture drops), and the packet is written once space
        returns; only a node that stops while the disk is still full drops it (counted as ``disk_full``)."""
        delay_s = 0.25
        while True:
            try:
                write_atomic(self.folder / packet.filename, data, durable=True)
                return True
            except OSError as exc:
                if exc.errno not in DISK_FULL_ERRNOS:
                    raise
                now = time.monotonic()
                if now - self._disk_full_logged_at >= 10.0:
                    log.error("spool: %s; waiting for space to store packet %d (capture waits too)", exc,
                              packet.sequence)
                    self._disk_full_logged_at = now
            if stop.wait(delay_s):
                self._metrics.dropped("disk_full")
                log.error("spool: the node is stopping and the disk is still full; packet %d dropped", packet.sequence)
                return False
            delay_s = min(2 * delay_s, 5.0)

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
    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from whichever thread made the change, without blocking) after every put, ack,
        discard or drop: how the link's event loop learns about packets without polling."""
        with self._cond:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with self._cond:
            self._listeners.remove(callback)

    def _changed(self) -> None:
        """Wake waiters (lock held)."""
        self._cond.notify_all()
        for callback in self._listeners:
            callback()

    def next_after(self, sequence: int) -> SpooledPacket | None:
        """The first spooled packet above ``sequence``, or None."""
        with self._cond:
            index = bisect.bisect_right(self._seqs, sequence)
            return self._packets[self._seqs[index]] if index < len(self._seqs) else None

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

    def mark_sent(self, sequence: int) -> None:
        """The link hands packet ``sequence`` to gRPC now: acknowledgements up to it become plausible."""
        with self._cond:
            self._sent = max(self._sent, sequence)

    def ack(self, acked_sequence: int) -> list[SpooledPacket]:
        """Cumulative ack (an Ack, or a Welcome's stored sequence): delete every packet up to ``acked_sequence`` and
        return them. Above ``sent_sequence`` it raises ImplausibleAckError and deletes nothing: a server cannot
        have stored what this node never sent."""
        with self._cond:
            if acked_sequence > self._sent:
                raise ImplausibleAckError(
                    acked_sequence, self._sent,
                    f"the server acknowledged camera {display(self.camera)} up to sequence {acked_sequence}, but "
                    f"this node has sent only up to {self._sent}; nothing was deleted. Another node may use the same "
                    "--camera (give each its own), or this node's spool was replaced while the server kept the "
                    "camera's numbers (use a new --camera, or remove the camera from the server's acks.json)")
            removed = []
            while self._seqs and self._seqs[0] <= acked_sequence:
                removed.append(self._remove(self._seqs[0]))
            if acked_sequence > self._acked:
                self._acked = acked_sequence
                self._metrics.acked_sequence.set(acked_sequence)
            self._update_gauges()
            self._changed()
            return removed

    def discard(self, sequence: int, reason: str) -> SpooledPacket | None:
        """Delete one packet the server will never take (PacketError, too large); counted under ``reason``."""
        with self._cond:
            if sequence not in self._packets:
                return None
            packet = self._remove(sequence)
            self._metrics.dropped(reason)
            self._update_gauges()
            self._changed()
            return packet

    def _remove(self, sequence: int) -> SpooledPacket:
        """Forget and delete one packet (lock held). state.json first when it does not cover the packet's sequence
        or capture time yet."""
        packet = self._packets[sequence]
        if sequence > self._persisted_last or packet.capture_ns > self._persisted_capture:
            self._write_state()  # may fail (disk full): then nothing is forgotten yet
        del self._packets[sequence]
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

    @property
    def sent_sequence(self) -> int:
        """Highest sequence that may have reached a server: sent by the link, or numbered by an earlier run."""
        with self._cond:
            return self._sent

    def sequences(self) -> list[int]:
        with self._cond:
            return list(self._seqs)
