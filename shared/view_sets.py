"""Which views belong to one timestamp: the one match rule of the fusion server and of ``mvic-codec decode``.

Words: a *camera group* is the set of cameras that see one scene (``group_id``); a *view set* is one timestamp's
views of one camera group, at most one view per camera, decoded jointly. Camera clocks differ and frame indices are
not trusted, so views are matched by capture time only:

    A view joins the open view set whose anchor (the capture time of the set's first view) is nearest to the view's
    capture time, at most ``tolerance_ns`` away, among the sets that hold no view of the view's camera yet; on a
    tie, the set with the earlier anchor. When no set fits, the view opens a new set anchored at its capture time.

Users: ``mvic.fusion_server.grouper`` (views of live streams, in arrival order; it also decides when a set is
complete) and ``mvic.shared.codec.grouping`` (a batch of ``.mvic`` files, in capture-time order). Given the views in
the same order, both form the same sets.

Pure functions over capture times and camera ids: no torch, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

#: The fusion server's default ``grouping.tolerance_ms`` (30 ms), ns: well under one frame interval at 30 fps.
DEFAULT_TOLERANCE_NS = 30_000_000


class OpenViewSet(Protocol):
    """What the rule needs to know about an open view set."""

    @property
    def anchor_ns(self) -> int:
        """Capture time of the set's first view, ns."""

    def holds(self, camera_id: str) -> bool:
        """The set already has a view of this camera."""


S = TypeVar("S", bound=OpenViewSet)


def check_tolerance(tolerance_ns: int) -> None:
    """Raise ValueError for a negative tolerance."""
    if tolerance_ns < 0:
        raise ValueError(f"the capture-time tolerance must be >= 0 ns, got {tolerance_ns}")


def find_view_set(capture_ns: int, camera_id: str, open_sets: Iterable[S], tolerance_ns: int) -> S | None:
    """The open view set a view joins (see the module docstring), or None when the view opens a new set."""
    best: S | None = None
    best_key: tuple[int, int] | None = None
    for candidate in open_sets:
        gap = abs(capture_ns - candidate.anchor_ns)
        if gap > tolerance_ns or candidate.holds(camera_id):
            continue
        key = (gap, candidate.anchor_ns)
        if best_key is None or key < best_key:
            best, best_key = candidate, key
    return best
