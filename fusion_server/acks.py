"""Cumulative acknowledgements and their journal: joint decode -> sink -> **ack**.

Hop before: the sink stage has durably written a group's reconstructions (or the core rejected a packet for good).
Hop after: the servicer sends ``Ack(acked_sequence)`` on the camera's current stream; the node drops those frames from
its spool.

``AckTracker`` (one per camera) knows which admitted sequences are still in flight; the cumulative ack is the highest
sequence below which nothing is in flight. ``AckJournal`` keeps each camera's acked sequence in ``out/acks.json``,
written atomically (``mvic.shared.fileio.write_atomic``) *before* the Ack is sent, so after a restart the Welcome
tells the node where to resume and frames at or below it are acknowledged again instead of decoded twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from mvic.shared.fileio import write_atomic

JOURNAL_NAME = "acks.json"
JOURNAL_VERSION = 1


class AckTracker:
    """Sequences of one camera: admitted, in flight, finished (written or rejected for good)."""

    def __init__(self, acked: int = 0):
        self.acked = acked  # everything <= acked is finished
        self.high_water = acked  # highest sequence admitted or finished
        self._in_flight: set[int] = set()

    def is_in_flight(self, sequence: int) -> bool:
        return sequence in self._in_flight

    def admit(self, sequence: int) -> None:
        if sequence <= self.high_water:
            raise ValueError(f"sequence {sequence} is not above {self.high_water}")
        self._in_flight.add(sequence)
        self.high_water = sequence

    def finish(self, sequence: int) -> bool:
        """Mark a sequence written or rejected; True when the cumulative ack moved."""
        self._in_flight.discard(sequence)
        self.high_water = max(self.high_water, sequence)
        new = min(self._in_flight) - 1 if self._in_flight else self.high_water
        if new > self.acked:
            self.acked = new
            return True
        return False

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)


class AckJournal:
    """Per-camera acked sequence numbers, durable across restarts."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / JOURNAL_NAME
        self._acked: dict[str, int] = {}
        self._groups: dict[str, str] = {}  # camera -> camera group it last streamed in

    def load(self) -> dict[str, int]:
        """Read the journal (an absent file means a fresh server); raises ValueError on a damaged one."""
        if not self.path.exists():
            self._acked = {}
            return {}
        try:
            raw = json.loads(self.path.read_text())
            if raw.get("version") != JOURNAL_VERSION:
                raise ValueError(f"journal version {raw.get('version')} is not {JOURNAL_VERSION}")
            acked = {str(k): int(v) for k, v in raw["cameras"].items()}
            self._groups = {str(k): str(v) for k, v in raw.get("groups", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"ack journal {self.path} is damaged ({exc}); move it away to start fresh (nodes will resend "
                "everything they still spool)"
            ) from None
        self._acked = acked
        return dict(acked)

    def get(self, camera: str) -> int | None:
        return self._acked.get(camera)

    def group_of(self, camera: str) -> str | None:
        return self._groups.get(camera)

    def save(self, updates: dict[str, int], groups: dict[str, str] | None = None) -> None:
        """Merge updates (never lowering a camera's value) and write the whole journal atomically."""
        for camera, acked in updates.items():
            self._acked[camera] = max(acked, self._acked.get(camera, 0))
        self._groups.update(groups or {})
        body = {"version": JOURNAL_VERSION, "cameras": dict(sorted(self._acked.items())),
                "groups": dict(sorted(self._groups.items()))}
        write_atomic(self.path, (json.dumps(body, indent=1) + "\n").encode(), durable=True)
