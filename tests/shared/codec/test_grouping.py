"""Batch grouping of views (mvic-codec decode): capture-time tolerance, one view per camera, one size per joint set."""

from __future__ import annotations

import pytest

from mvic.shared.bitstream import ViewHeader
from mvic.shared.codec.grouping import group_headers


def _h(cam: str, t_ms: float, h: int = 64) -> ViewHeader:
    return ViewHeader(3, b"\0" * 8, 0, cam, 1, int(t_ms * 1e6), h, 96, 0, 32, 0)


def test_views_within_the_tolerance_of_the_first_form_one_set():
    headers = [_h("C2", 1010), _h("C1", 1000), _h("C3", 1031), _h("C3", 1020)]
    sets = group_headers(headers, 30_000_000)
    assert [s.members for s in sets] == [(1, 0, 3), (2,)]  # C3 at 1031 ms is past 1000 + 30 ms
    assert sets[0].anchor_ns == 1_000_000_000


def test_a_camera_twice_opens_another_set_and_sizes_split_sets():
    sets = group_headers([_h("C1", 0), _h("C1", 1), _h("C2", 2, h=128), _h("C3", 3)], 30_000_000)
    assert [s.members for s in sets] == [(0, 3), (2,), (1,)]
    with pytest.raises(ValueError):
        group_headers([_h("C1", 0)], -1)
