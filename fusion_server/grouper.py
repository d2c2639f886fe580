"""Views of one timestamp into view sets: receive -> **group** -> joint decode -> sink -> ack.

Hop before: ``core.FusionCore.receive`` admits a checked packet as a ``ReceivedView`` (the ack book has made sure
that each (camera, sequence) is admitted once while it is in flight).
Hop after: each emitted ``ViewSet`` goes to the decode stage (``decoder.DecodePipeline``).

One ``Grouper`` per camera group. A view joins an open view set by the rule ``mvic-codec decode`` uses too,
``mvic.shared.view_sets.find_view_set`` (capture time only: the nearest anchor within ``tolerance_ns`` among the sets
without a view of its camera), or opens a new one. A view set is emitted

* at once when every expected camera (the cameras connected in that camera group) is present, or has already sent a
  view captured after the set's window (it skipped this timestamp, e.g. under a latest-frame-only policy);
* after ``max_wait_s`` without its missing views (``expire``), with the views present: the codec decodes any K;
  while a missing camera is *away* (it disconnected, or the server restarted, less than ``away_wait_s`` ago: nodes
  reconnect with backoff and then send their backlog), its sets wait for it until that grace ends;
* early when more than ``max_open`` are open (the oldest goes first), which bounds memory.

View sets are emitted oldest anchor first. Pure logic with an injected clock: no asyncio, no threads, no gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mvic.fusion_server.records import ReceivedView, ViewSet
from mvic.shared.view_sets import check_tolerance, find_view_set


@dataclass
class _OpenSet:
    anchor_ns: int
    opened_s: float
    views: dict[str, ReceivedView] = field(default_factory=dict)

    def holds(self, camera_id: str) -> bool:
        return camera_id in self.views


@dataclass
class GrouperStats:
    forced: int = 0  # emitted early because too many sets were open


class Grouper:
    """Assembles the view sets of one camera group (one installation)."""

    def __init__(self, group_id: str, tolerance_ns: int, max_wait_s: float, max_open: int = 64,
                 away_wait_s: float = 0.0):
        check_tolerance(tolerance_ns)
        if max_wait_s < 0 or max_open < 1:
            raise ValueError("max_wait_s must be >= 0 and max_open >= 1")
        self.group_id = group_id
        self.tolerance_ns = tolerance_ns
        self.max_wait_s = max_wait_s
        self.max_open = max_open
        self.away_wait_s = away_wait_s
        self.stats = GrouperStats()
        self._open: list[_OpenSet] = []  # sorted by anchor_ns
        self._expected: frozenset[str] = frozenset()
        self._away: dict[str, float] = {}  # camera -> monotonic time until which its views are still awaited
        self._last_capture: dict[str, int] = {}  # newest capture time seen per camera

    # ------------------------------------------------------------------------------------------------ inputs
    def set_expected(self, cameras: frozenset[str] | set[str], now_s: float) -> list[ViewSet]:
        """Cameras to wait for (those connected). Fewer cameras can complete open sets: they are returned."""
        self._expected = frozenset(cameras)
        for camera in self._expected:
            self._away.pop(camera, None)
        return self._emit_ready(now_s)

    def set_away(self, camera: str, now_s: float) -> None:
        """A camera that is not connected now but is expected back within away_wait_s (a reconnect, a restart)."""
        if self.away_wait_s > 0:  # set_expected with the camera among the connected ones ends its absence
            self._away[camera] = now_s + self.away_wait_s

    def add(self, view: ReceivedView, now_s: float) -> list[ViewSet]:
        """Take one view; return the view sets that became ready (oldest first)."""
        self._last_capture[view.camera_id] = max(view.capture_ns, self._last_capture.get(view.camera_id, 0))
        target = find_view_set(view.capture_ns, view.camera_id, self._open, self.tolerance_ns)
        if target is None:
            target = _OpenSet(view.capture_ns, now_s)
            self._open.append(target)
            self._open.sort(key=lambda s: s.anchor_ns)
        target.views[view.camera_id] = view
        out = self._emit_ready(now_s)
        while len(self._open) > self.max_open:
            self.stats.forced += 1
            out.append(self._emit(self._open[0], now_s))
        return sorted(out, key=lambda s: s.anchor_ns)

    def expire(self, now_s: float) -> list[ViewSet]:
        """View sets that waited max_wait_s: emitted with the views present (and any ready ones)."""
        out = self._emit_ready(now_s)
        for open_set in [s for s in self._open if self._deadline(s) <= now_s]:
            out.append(self._emit(open_set, now_s))
        self._away = {c: t for c, t in self._away.items() if t > now_s}  # after: their sets count as partial
        return sorted(out, key=lambda s: s.anchor_ns)

    def flush(self, now_s: float) -> list[ViewSet]:
        """Every open view set, now (shutdown drain)."""
        return [self._emit(s, now_s) for s in list(self._open)]

    # ----------------------------------------------------------------------------------------------- queries
    def next_deadline(self) -> float | None:
        """Monotonic time at which the oldest open view set expires, or None when none is open."""
        if not self._open:
            return None
        return min(self._deadline(s) for s in self._open)

    @property
    def expected(self) -> frozenset[str]:
        """The cameras last given to ``set_expected``."""
        return self._expected

    @property
    def open_sets(self) -> int:
        return len(self._open)

    @property
    def awaiting(self) -> bool:
        """Some camera is away and still awaited."""
        return bool(self._away)

    # -------------------------------------------------------------------------------------------- internals
    def _deadline(self, open_set: _OpenSet) -> float:
        """Monotonic time after which the set is decoded without its missing views."""
        deadline = open_set.opened_s + self.max_wait_s
        window_end = open_set.anchor_ns + self.tolerance_ns
        for camera, until in self._away.items():
            if camera not in open_set.views and self._last_capture.get(camera, -1) <= window_end:
                deadline = max(deadline, until)
        return deadline

    def _is_ready(self, open_set: _OpenSet) -> bool:
        if not self._expected:
            return False  # nobody to wait for is known: only the timeout decides
        window_end = open_set.anchor_ns + self.tolerance_ns
        awaited = self._expected | self._away.keys()
        return all(cam in open_set.views or self._last_capture.get(cam, -1) > window_end for cam in awaited)

    def _emit_ready(self, now_s: float) -> list[ViewSet]:
        return [self._emit(s, now_s) for s in [s for s in self._open if self._is_ready(s)]]

    def _emit(self, open_set: _OpenSet, now_s: float) -> ViewSet:
        self._open.remove(open_set)
        awaited = self._expected | self._away.keys()
        complete = bool(awaited) and awaited <= open_set.views.keys()
        views = tuple(open_set.views[c] for c in sorted(open_set.views))
        return ViewSet(self.group_id, open_set.anchor_ns, views, open_set.opened_s, now_s, complete)
