"""Batch grouping of views (mvic-codec decode): the shared match rule (mvic.shared.view_sets), one view per camera,
one size per joint set."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mvic.shared.bitstream import ViewHeader
from mvic.shared.codec.grouping import group_headers
from mvic.shared.view_sets import find_view_set


def _h(cam: str, t_ms: float, h: int = 64) -> ViewHeader:
    return ViewHeader(3, b"\0" * 8, 0, cam, 1, int(t_ms * 1e6), h, 96, 0, 32, 0)


@dataclass
class _Open:
    anchor_ns: int
    cameras: set[str] = field(default_factory=set)

    def holds(self, camera_id: str) -> bool:
        return camera_id in self.cameras


def test_the_rule_takes_the_nearest_anchor_within_the_tolerance_without_the_camera():
    a, b, c = _Open(1000, {"C1"}), _Open(1050, {"C1"}), _Open(1100, {"C2"})
    assert find_view_set(1040, "C2", [a, b, c], 60) is b  # 10 from b, 40 from a, 60 from c (which has C2)
    assert find_view_set(1040, "C1", [a, b, c], 60) is c  # a and b already hold a C1 view; 60 is within 60
    assert find_view_set(1040, "C1", [a, b, c], 59) is None  # nothing fits: a new set
    assert find_view_set(1025, "C3", [b, a], 60) is a  # a tie goes to the earlier anchor, whatever the order


def test_views_within_the_tolerance_of_the_first_form_one_set():
    headers = [_h("C2", 1010), _h("C1", 1000), _h("C3", 1031), _h("C3", 1020)]
    sets = group_headers(headers, 30_000_000)
    assert [s.members for s in sets] == [(1, 0, 3), (2,)]  # C3 at 1031 ms is past 1000 + 30 ms
    assert sets[0].anchor_ns == 1_000_000_000


def test_a_view_joins_the_nearest_set_as_on_the_server():
    # mvic-codec decode used to put a view in the earliest set that fit; the server (and now both) take the nearest
    headers = [_h("C1", 1000), _h("C1", 1030), _h("C2", 1040)]  # C2: 40 ms from the first set, 10 from the second
    assert [s.members for s in group_headers(headers, 60_000_000)] == [(0,), (1, 2)]


def test_a_camera_twice_opens_another_set_and_sizes_split_sets():
    # C1 twice, 1 ms apart: the second opens a set at 1 ms, which is nearer to C2 (2 ms) and C3 (3 ms) than 0 ms
    sets = group_headers([_h("C1", 0), _h("C1", 1), _h("C2", 2, h=128), _h("C3", 3)], 30_000_000)
    assert [s.members for s in sets] == [(0,), (1, 3), (2,)]  # C2 is of another size: a joint set of its own
    assert [s.anchor_ns for s in sets] == [0, 1_000_000, 1_000_000]
    with pytest.raises(ValueError):
        group_headers([_h("C1", 0)], -1)
