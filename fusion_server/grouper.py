"""Group views of one timestamp: receive -> **group** -> joint decode.

Hop before: ``core.FusionCore.receive`` admits a checked packet as a ``ReceivedView``.
Hop after: each emitted ``ViewGroup`` goes to the decode stage (``decoder.GroupDecoder``).

Camera clocks differ and frame indices are not trusted, so views are matched by capture time only: a view joins the
open group of its camera group whose anchor (the first view's capture time) is nearest and within ``tolerance_ns``,
if that group has no view of this camera yet; otherwise it opens a new group. A group is emitted

* at once when every expected camera (the cameras connected in that camera group) is present, or has already sent a
  view captured after the group's window (it skipped this timestamp, e.g. under a latest-frame-only policy);
* after ``max_wait_s`` without its missing views (``expire``), with the views present: the codec decodes any K;
  while a missing camera is *away* (it disconnected, or the server restarted, less than ``away_wait_s`` ago: nodes
  reconnect with backoff and then send their backlog), its groups wait for it until that grace ends;
* early when more than ``max_open_groups`` are open (the oldest goes first), which bounds memory.

Groups are emitted oldest anchor first. A view whose (camera, sequence) was already taken raises DuplicateViewError.
Pure logic with an injected clock: no asyncio, no threads, no gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mvic.fusion_server.records import ReceivedView, ViewGroup


class DuplicateViewError(ValueError):
    """The grouper already holds or has emitted this (camera, sequence)."""


@dataclass
class _OpenGroup:
    anchor_ns: int
    opened_s: float
    views: dict[str, ReceivedView] = field(default_factory=dict)


@dataclass
class GrouperStats:
    emitted_complete: int = 0
    emitted_partial: int = 0
    forced: int = 0  # emitted early because too many groups were open
    duplicates: int = 0


class Grouper:
    """Assembles the groups of one camera group (one installation)."""

    def __init__(self, group_id: str, tolerance_ns: int, max_wait_s: float, max_open_groups: int = 64,
                 away_wait_s: float = 0.0):
        if tolerance_ns < 0 or max_wait_s < 0 or max_open_groups < 1:
            raise ValueError("tolerance and wait must be >= 0 and max_open_groups >= 1")
        self.group_id = group_id
        self.tolerance_ns = tolerance_ns
        self.max_wait_s = max_wait_s
        self.max_open_groups = max_open_groups
        self.away_wait_s = away_wait_s
        self.stats = GrouperStats()
        self._open: list[_OpenGroup] = []  # sorted by anchor_ns
        self._expected: frozenset[str] = frozenset()
        self._away: dict[str, float] = {}  # camera -> monotonic time until which its views are still awaited
        self._last_capture: dict[str, int] = {}  # newest capture time seen per camera
        self._last_sequence: dict[str, int] = {}  # highest sequence taken per camera

    # ------------------------------------------------------------------------------------------------ inputs
    def set_expected(self, cameras: frozenset[str] | set[str], now_s: float) -> list[ViewGroup]:
        """Cameras to wait for (those connected). Fewer cameras can complete open groups: they are returned."""
        self._expected = frozenset(cameras)
        for camera in self._expected:
            self._away.pop(camera, None)
        return self._emit_ready(now_s)

    def set_away(self, camera: str, now_s: float) -> None:
        """A camera that is not connected now but is expected back within away_wait_s (a reconnect, a restart)."""
        if self.away_wait_s > 0:  # set_expected with the camera among the connected ones ends its absence
            self._away[camera] = now_s + self.away_wait_s

    def add(self, view: ReceivedView, now_s: float) -> list[ViewGroup]:
        """Take one view; return the groups that became ready (oldest first)."""
        if view.sequence <= self._last_sequence.get(view.camera_id, 0):
            self.stats.duplicates += 1
            raise DuplicateViewError(f"{view.camera_id}#{view.sequence} was already taken")
        self._last_sequence[view.camera_id] = view.sequence
        self._last_capture[view.camera_id] = max(view.capture_ns, self._last_capture.get(view.camera_id, 0))
        target = self._match(view)
        if target is None:
            target = _OpenGroup(view.capture_ns, now_s)
            self._open.append(target)
            self._open.sort(key=lambda g: g.anchor_ns)
        target.views[view.camera_id] = view
        out = self._emit_ready(now_s)
        while len(self._open) > self.max_open_groups:
            self.stats.forced += 1
            out.append(self._emit(self._open[0], now_s))
        return sorted(out, key=lambda g: g.anchor_ns)

    def expire(self, now_s: float) -> list[ViewGroup]:
        """Groups that waited max_wait_s: emitted with the views present (and any ready ones)."""
        out = self._emit_ready(now_s)
        for group in [g for g in self._open if self._deadline(g) <= now_s]:
            out.append(self._emit(group, now_s))
        self._away = {c: t for c, t in self._away.items() if t > now_s}  # after: their groups count as partial
        return sorted(out, key=lambda g: g.anchor_ns)

    def flush(self, now_s: float) -> list[ViewGroup]:
        """Every open group, now (shutdown drain)."""
        return [self._emit(g, now_s) for g in list(self._open)]

    # ----------------------------------------------------------------------------------------------- queries
    def next_deadline(self) -> float | None:
        """Monotonic time at which the oldest open group expires, or None when none is open."""
        if not self._open:
            return None
        return min(self._deadline(g) for g in self._open)

    @property
    def open_groups(self) -> int:
        return len(self._open)

    @property
    def awaiting(self) -> bool:
        """Some camera is away and still awaited."""
        return bool(self._away)

    # -------------------------------------------------------------------------------------------- internals
    def _match(self, view: ReceivedView) -> _OpenGroup | None:
        best, best_gap = None, None
        for group in self._open:
            gap = abs(view.capture_ns - group.anchor_ns)
            if view.camera_id in group.views or gap > self.tolerance_ns:
                continue
            if best_gap is None or gap < best_gap:
                best, best_gap = group, gap
        return best

    def _deadline(self, group: _OpenGroup) -> float:
        """Monotonic time after which the group is decoded without its missing views."""
        deadline = group.opened_s + self.max_wait_s
        window_end = group.anchor_ns + self.tolerance_ns
        for camera, until in self._away.items():
            if camera not in group.views and self._last_capture.get(camera, -1) <= window_end:
                deadline = max(deadline, until)
        return deadline

    def _is_ready(self, group: _OpenGroup) -> bool:
        if not self._expected:
            return False  # nobody to wait for is known: only the timeout decides
        window_end = group.anchor_ns + self.tolerance_ns
        awaited = self._expected | self._away.keys()
        return all(cam in group.views or self._last_capture.get(cam, -1) > window_end for cam in awaited)

    def _emit_ready(self, now_s: float) -> list[ViewGroup]:
        return [self._emit(g, now_s) for g in [g for g in self._open if self._is_ready(g)]]

    def _emit(self, group: _OpenGroup, now_s: float) -> ViewGroup:
        self._open.remove(group)
        awaited = self._expected | self._away.keys()
        complete = bool(awaited) and awaited <= group.views.keys()
        if complete:
            self.stats.emitted_complete += 1
        else:
            self.stats.emitted_partial += 1
        views = tuple(group.views[c] for c in sorted(group.views))
        return ViewGroup(self.group_id, group.anchor_ns, views, group.opened_s, now_s, complete)
