"""Which views of a batch of files are decoded together (``mvic-codec decode``).

Views are taken in capture-time order and matched into view sets (one timestamp's views of a camera group, at most
one per camera) by the rule the fusion server's grouper uses too: ``mvic.shared.view_sets.find_view_set`` (the
nearest open set within the tolerance that has no view of the camera yet). Views of different padded sizes cannot
share one synthesis, so each size within a view set is a joint set of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence

from mvic.shared.bitstream import ViewHeader
from mvic.shared.view_sets import DEFAULT_TOLERANCE_NS, check_tolerance, find_view_set

__all__ = ["DEFAULT_TOLERANCE_NS", "JointSet", "group_headers"]


@dataclass(frozen=True)
class JointSet:
    """Positions (in the input order) of views decoded together: one timestamp, one padded size."""

    members: tuple[int, ...]
    anchor_ns: int  # capture time of the view set's first view


@dataclass
class _OpenSet:
    anchor_ns: int
    members: list[int] = field(default_factory=list)
    cameras: set[str] = field(default_factory=set)

    def holds(self, camera_id: str) -> bool:
        return camera_id in self.cameras


def group_headers(headers: Sequence[ViewHeader], tolerance_ns: int = DEFAULT_TOLERANCE_NS) -> list[JointSet]:
    """Joint sets in capture-time order (then by padded size, in order of first appearance)."""
    check_tolerance(tolerance_ns)
    order = sorted(range(len(headers)), key=lambda i: (headers[i].capture_ns, i))
    sets: list[_OpenSet] = []  # in anchor order: views come in capture-time order
    for i in order:
        h = headers[i]
        target = find_view_set(h.capture_ns, h.camera_id, sets, tolerance_ns)
        if target is None:
            target = _OpenSet(h.capture_ns)
            sets.append(target)
        target.members.append(i)
        target.cameras.add(h.camera_id)
    out = []
    for view_set in sets:
        by_size: dict[tuple[int, int], list[int]] = {}
        for i in view_set.members:
            by_size.setdefault(headers[i].padded_size, []).append(i)
        out += [JointSet(tuple(part), view_set.anchor_ns) for part in by_size.values()]
    return out
