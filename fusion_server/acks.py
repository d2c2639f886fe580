"""The ack book: what the server holds of each camera, and the cumulative acks that say so.

    receive -> group -> joint decode -> sink -> **ack**

Hop before: the core asks ``classify`` about every packet, ``admit``s the ones it checked, and settles each
admitted frame once: ``stored`` (the sink wrote it), ``reject`` (rejected for good) or ``release`` (not written:
the node resends it and the resend is decoded again).
Hop after: ``commit`` journals the cumulative acks that moved and returns them; the core pushes them to the cameras'
sessions and the nodes drop those frames from their spools.

What an ack means (``mvic.v1.Ack``): every sequence up to ``acked_sequence`` is stored, was rejected for good, or
was never sent. The book keeps it so:

* only a stored frame moves a camera's ack; a rejected packet leaves no trace (no state, no journal entry, no slot);
* an admitted frame not yet settled holds the ack below it, and so does a released frame until its resend is stored;
* the ack is journalled in ``out/acks.json`` (atomically, ``mvic.shared.fileio.write_atomic``) *before* it is sent,
  so after a restart the Welcome tells the node where to resume and frames at or below it are acknowledged again
  instead of decoded twice. A failed journal write releases the frames it would have acknowledged.

It is the one place where sequence numbers are checked (``classify``), and it holds the camera slots: a camera
takes one of ``max_cameras`` when its first frame is admitted (the journal's cameras keep theirs) and gives it back
when that ends with nothing stored. Used on the event loop only; ``commit`` writes the file on an executor.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from mvic.fusion_server.errors import AckJournalError, TooManyCamerasError
from mvic.shared.fileio import write_atomic

JOURNAL_NAME = "acks.json"
JOURNAL_VERSION = 1
MAX_SEQUENCE = (1 << 64) - 1  # ViewPacket.sequence is a uint64


class Admission(enum.Enum):
    """What a packet's sequence number is to the book (``AckBook.classify``)."""

    NEW = "new"  # above every admitted sequence, or released for a retry: check it and admit it
    ACKED = "acked"  # at or below the camera's ack: stored before; acknowledge again, never decode twice
    PENDING = "pending"  # in flight, or stored behind an older frame in flight: dropped, its ack follows
    OUT_OF_ORDER = "out_of_order"  # below the last admitted sequence and none of the above


@dataclass(frozen=True)
class Commit:
    """What ``AckBook.commit`` did."""

    acked: Mapping[str, int]  # camera -> its new cumulative ack, journalled (send it)
    released: tuple[str, ...] = ()  # cameras whose stored frames were released because the journal write failed
    error: OSError | None = None  # that failure


@dataclass
class _Camera:
    group: str  # camera group it streams (or last streamed) in
    acked: int = 0  # journalled cumulative ack
    high_water: int = 0  # highest sequence admitted
    in_flight: set[int] = field(default_factory=set)  # admitted, not settled
    stored: set[int] = field(default_factory=set)  # written, above the ack (an older frame is still unsettled)
    retry: set[int] = field(default_factory=set)  # released: not stored, admitted again when resent

    def ack_candidate(self) -> int:
        """The highest stored sequence with nothing in flight or released below it; ``acked`` when there is none."""
        blockers = self.in_flight | self.retry
        floor = min(blockers) if blockers else MAX_SEQUENCE + 1
        return max((s for s in self.stored if s < floor), default=self.acked)

    @property
    def unsettled(self) -> int:
        return len(self.in_flight) + len(self.stored) + len(self.retry)


class AckBook:
    """Per camera: admitted, in flight, stored and released sequences; the journalled cumulative ack; the slot."""

    def __init__(self, out_dir: str | Path, max_cameras: int = 64):
        self.path = Path(out_dir) / JOURNAL_NAME
        self.max_cameras = max_cameras
        self._cameras: dict[str, _Camera] = {}
        self._lock = asyncio.Lock()  # one journal write at a time

    # ---------------------------------------------------------------------------------------------- journal
    def load(self) -> int:
        """Read the journal (an absent file means a fresh server); the number of cameras it holds. Raises
        AckJournalError on a damaged one."""
        if not self.path.exists():
            return 0
        try:
            raw = json.loads(self.path.read_text())
            if raw.get("version") != JOURNAL_VERSION:
                raise ValueError(f"version {raw.get('version')!r} is not {JOURNAL_VERSION}")
            groups = raw.get("groups", {})
            cameras = {}
            for camera, acked in raw["cameras"].items():
                if type(acked) is not int or not 0 < acked <= MAX_SEQUENCE:
                    raise ValueError(f"camera {camera!r}: acked sequence {acked!r} is not in 1..2^64-1")
                group = groups.get(camera, "")
                if not isinstance(group, str):
                    raise ValueError(f"camera {camera!r}: group {group!r} is not text")
                cameras[camera] = _Camera(group, acked, acked)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AckJournalError(
                f"ack journal {self.path} is damaged ({exc}); move it away to start fresh (nodes then resend "
                "everything they still spool) or restore it from a backup"
            ) from None
        self._cameras = cameras
        return len(cameras)

    async def commit(self, executor: Executor | None = None) -> Commit:
        """Journal every cumulative ack that can move, then move them. On OSError nothing moves: the stored frames
        those acks would have covered are released (their nodes must resend them) and the error is returned."""
        async with self._lock:
            moves = {name: to for name, cam in self._cameras.items() if (to := cam.ack_candidate()) > cam.acked}
            if not moves:
                return Commit({})
            body = self._journal_body(moves)
            try:
                await asyncio.get_running_loop().run_in_executor(executor, _write, self.path, body)
            except OSError as exc:
                for name, to in moves.items():
                    cam = self._cameras[name]
                    cam.retry |= {s for s in cam.stored if s <= to}
                    cam.stored -= cam.retry
                return Commit({}, tuple(sorted(moves)), exc)
            for name, to in moves.items():
                cam = self._cameras[name]
                cam.acked = max(cam.acked, to)
                cam.stored = {s for s in cam.stored if s > cam.acked}
            return Commit(moves)

    def _journal_body(self, moves: Mapping[str, int]) -> bytes:
        acked = {name: moves.get(name, cam.acked) for name, cam in self._cameras.items()}
        acked = {name: value for name, value in sorted(acked.items()) if value > 0}
        body = {"version": JOURNAL_VERSION, "cameras": acked,
                "groups": {name: self._cameras[name].group for name in acked}}
        return (json.dumps(body, indent=1) + "\n").encode()

    # ---------------------------------------------------------------------------------------------- queries
    def acked(self, camera: str) -> int:
        """The camera's journalled cumulative ack (0: nothing stored)."""
        cam = self._cameras.get(camera)
        return cam.acked if cam else 0

    def journalled(self) -> dict[str, str]:
        """Cameras with an ack in the journal -> the camera group they last streamed in."""
        return {name: cam.group for name, cam in self._cameras.items() if cam.acked > 0}

    def holds_slot(self, camera: str) -> bool:
        """The camera is in the journal or has a frame admitted."""
        return camera in self._cameras

    def has_room(self, camera: str) -> bool:
        """The camera holds a slot, or one is free."""
        return camera in self._cameras or len(self._cameras) < self.max_cameras

    @property
    def slots_taken(self) -> int:
        return len(self._cameras)

    def unsettled(self, camera: str) -> int:
        """Frames of the camera that are admitted, or stored or released, but not yet covered by its ack."""
        cam = self._cameras.get(camera)
        return cam.unsettled if cam else 0

    def classify(self, camera: str, sequence: int) -> Admission:
        """The one check of sequence numbers (see ``Admission``); sequence 0 is the caller's to refuse."""
        cam = self._cameras.get(camera)
        if cam is None:
            return Admission.NEW
        if sequence <= cam.acked:
            return Admission.ACKED
        if sequence in cam.in_flight or sequence in cam.stored:
            return Admission.PENDING
        if sequence > cam.high_water or sequence in cam.retry:
            return Admission.NEW
        return Admission.OUT_OF_ORDER

    # ------------------------------------------------------------------------------------------ transitions
    def admit(self, camera: str, group: str, sequence: int) -> None:
        """A checked packet enters the data path; the camera takes a slot if it has none (TooManyCamerasError when
        every slot is held by other cameras)."""
        if not 0 < sequence <= MAX_SEQUENCE or self.classify(camera, sequence) is not Admission.NEW:
            raise ValueError(f"{camera}#{sequence} cannot be admitted now ({self.classify(camera, sequence).value})")
        cam = self._cameras.get(camera)
        if cam is None:
            if len(self._cameras) >= self.max_cameras:
                raise TooManyCamerasError(
                    f"the server already holds frames of {len(self._cameras)} cameras (max_cameras); raise "
                    "max_cameras in server.yaml or run another server"
                )
            cam = self._cameras[camera] = _Camera(group)
        cam.group = group
        cam.retry.discard(sequence)
        cam.in_flight.add(sequence)
        cam.high_water = max(cam.high_water, sequence)

    def stored(self, camera: str, sequence: int) -> None:
        """The sink wrote the frame; ``commit`` moves the ack over it once nothing older is unsettled."""
        cam = self._cameras.get(camera)
        if cam is not None and sequence in cam.in_flight:
            cam.in_flight.remove(sequence)
            cam.stored.add(sequence)

    def reject(self, camera: str, sequence: int) -> None:
        """The frame can never be decoded: it leaves without moving the ack."""
        cam = self._cameras.get(camera)
        if cam is not None and sequence in cam.in_flight:
            cam.in_flight.remove(sequence)
            if cam.acked == 0 and cam.unsettled == 0:
                del self._cameras[camera]  # nothing of it was ever stored: it gives its slot back

    def release(self, camera: str, sequence: int) -> None:
        """The frame was not written: it holds the camera's ack until its resend is admitted and stored."""
        cam = self._cameras.get(camera)
        if cam is not None and sequence in cam.in_flight:
            cam.in_flight.remove(sequence)
            cam.retry.add(sequence)

    def resumed_at(self, camera: str, sequence: int) -> None:
        """A new stream of the camera sent ``sequence`` first: a node resends in sequence order from its oldest
        unacknowledged frame, so a released frame below it is one the node no longer holds (another server of a
        cluster stored it, or the node's spool dropped it). It stops holding the ack."""
        cam = self._cameras.get(camera)
        if cam is not None and cam.retry:
            cam.retry = {s for s in cam.retry if s >= sequence}


def _write(path: Path, body: bytes) -> None:
    write_atomic(path, body, durable=True)
