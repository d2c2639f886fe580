"""Which views of a batch of files form one multi-view group (``mvic-codec decode``).

A *camera group* is the set of cameras that see one scene; a *view group* is one timestamp's views of it, at most
one per camera, decoded jointly. The rules are the fusion server's (fusion_server/grouper.py): a view belongs to a
group whose first view was captured within ``tolerance_ns`` of it and that has no view of its camera yet, else it
opens a new one; views of different padded sizes cannot share one synthesis, so each size is a joint set of its own.
One difference: the server, seeing a live stream, joins the *nearest* such group; here the views are taken in
capture-time order and each joins the *earliest* that fits. The two agree whenever timestamps are more than twice
the tolerance apart, as camera frames are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mvic.shared.bitstream import ViewHeader

DEFAULT_TOLERANCE_NS = 30_000_000  # the server's grouping.tolerance_ms default


@dataclass(frozen=True)
class JointSet:
    """Positions (in the input order) of views decoded together: one timestamp, one padded size."""

    members: tuple[int, ...]
    anchor_ns: int  # capture time of the view group's first view


def group_headers(headers: Sequence[ViewHeader], tolerance_ns: int = DEFAULT_TOLERANCE_NS) -> list[JointSet]:
    """Joint sets in capture-time order (then by padded size, in order of first appearance)."""
    if tolerance_ns < 0:
        raise ValueError(f"the tolerance must be >= 0 ns, got {tolerance_ns}")
    order = sorted(range(len(headers)), key=lambda i: (headers[i].capture_ns, i))
    groups: list[tuple[int, list[int]]] = []  # (anchor_ns, members)
    for i in order:
        h = headers[i]
        for anchor, members in groups:
            if h.capture_ns - anchor <= tolerance_ns and all(headers[j].camera_id != h.camera_id for j in members):
                members.append(i)
                break
        else:
            groups.append((h.capture_ns, [i]))
    out = []
    for anchor, members in groups:
        by_size: dict[tuple[int, int], list[int]] = {}
        for i in members:
            by_size.setdefault(headers[i].padded_size, []).append(i)
        out += [JointSet(tuple(part), anchor) for part in by_size.values()]
    return out
