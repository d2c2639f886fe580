"""Grouper: capture-time tolerance (the shared match rule), timeout with a missing camera, bounded open view sets."""

from __future__ import annotations

import numpy as np
import pytest

from mvic.fusion_server.grouper import Grouper
from mvic.fusion_server.records import ReceivedView

MS = 1_000_000


def view(camera: str, sequence: int, capture_ms: float) -> ReceivedView:
    return ReceivedView(camera, "", sequence, int(capture_ms * MS), 0, 100, None)  # type: ignore[arg-type]


def grouper(expected=("A", "B", "C"), tolerance_ms=20, wait_s=0.5, max_open=64) -> Grouper:
    g = Grouper("", tolerance_ms * MS, wait_s, max_open)
    assert g.set_expected(set(expected), 0.0) == []
    return g


def test_views_within_tolerance_form_one_view_set_emitted_when_complete():
    g = grouper()
    assert g.add(view("A", 1, 1000), 0.0) == []
    assert g.add(view("B", 7, 1012), 0.01) == []  # another clock, another frame index: matched by time only
    (group,) = g.add(view("C", 3, 989), 0.02)
    assert group.cameras == ("A", "B", "C") and group.complete and group.anchor_ns == 1000 * MS
    assert g.open_sets == 0


def test_views_outside_tolerance_open_separate_view_sets():
    g = grouper()
    g.add(view("A", 1, 1000), 0.0)
    assert g.add(view("B", 1, 1030), 0.0) == []  # 30 ms > 20 ms
    assert g.open_sets == 2


def test_nearest_view_set_wins():
    g = grouper(expected=("A", "B", "C", "D"), tolerance_ms=60)
    g.add(view("A", 1, 1000), 0.0)
    g.add(view("A", 2, 1100), 0.0)
    g.add(view("B", 1, 1090), 0.0)  # within 60 ms of 1100 only
    assert g.add(view("C", 1, 1040), 0.0) == []  # 40 ms from 1000, 60 from 1100: joins the first
    (first,) = g.expire(1.0)[:1]
    assert first.cameras == ("A", "C")


def test_a_view_set_missing_a_camera_decodes_after_max_wait_with_views_present():
    g = grouper()
    g.add(view("A", 1, 1000), 10.0)
    g.add(view("B", 1, 1005), 10.1)
    assert g.expire(10.4) == []
    assert g.next_deadline() == pytest.approx(10.5)
    (group,) = g.expire(10.5)
    assert group.cameras == ("A", "B") and not group.complete


def test_camera_that_moved_past_a_timestamp_does_not_make_it_wait():
    g = grouper(expected=("A", "B"))
    g.add(view("A", 1, 1000), 0.0)
    g.add(view("B", 1, 1005), 0.0)  # complete -> emitted
    g.add(view("A", 2, 1100), 0.0)  # B skips this frame (latest-frame-only policy) ...
    ready = g.add(view("B", 2, 1200), 0.01)  # ... and its next view is later than the window
    assert [grp.cameras for grp in ready] == [("A",)]


def test_a_resent_view_is_taken_again():
    """Sequence numbers are the ack book's to check (acks.AckBook.classify), not the grouper's: a frame released
    after a failed write comes back with its old sequence and capture time and must form a view set again."""
    g = grouper(expected=("A", "B"))
    g.add(view("A", 5, 1000), 0.0)
    (first,) = g.add(view("B", 5, 1004), 0.0)
    g.add(view("A", 6, 1100), 0.0)
    (again,) = g.add(view("B", 5, 1004), 0.1)  # A has moved past this timestamp: B's resend goes alone, at once
    assert first.cameras == ("A", "B") and again.cameras == ("B",) and again.views[0].sequence == 5
    assert not again.complete and g.open_sets == 1  # A#6 still waits for B


def test_same_camera_twice_in_the_window_opens_a_new_view_set():
    g = grouper(expected=("A", "B"), tolerance_ms=50)
    g.add(view("A", 1, 1000), 0.0)
    g.add(view("A", 2, 1010), 0.0)  # a fast camera: never two views of one camera in a group
    assert g.open_sets == 2


def test_open_view_sets_are_bounded_oldest_first():
    g = grouper(expected=("A", "B"), max_open=2)
    g.add(view("A", 1, 1000), 0.0)
    g.add(view("A", 2, 1100), 0.0)
    (forced,) = g.add(view("A", 3, 1200), 0.0)
    assert forced.anchor_ns == 1000 * MS and g.stats.forced == 1 and g.open_sets == 2


def test_disconnect_completes_waiting_view_sets_and_flush_empties():
    g = grouper(expected=("A", "B"))
    g.add(view("A", 1, 1000), 0.0)
    g.add(view("A", 2, 1100), 0.0)
    ready = g.set_expected({"A"}, 0.1)  # B went away: nothing more to wait for
    assert [grp.anchor_ns for grp in ready] == [1000 * MS, 1100 * MS] and all(grp.complete for grp in ready)
    g.add(view("A", 3, 1200), 0.2)
    assert g.open_sets == 0
    g.set_expected({"A", "B"}, 0.3)
    g.add(view("A", 4, 1300), 0.3)
    assert [grp.cameras for grp in g.flush(0.4)] == [("A",)] and g.open_sets == 0


def test_away_camera_is_awaited_for_its_grace_then_not():
    g = Grouper("", 20 * MS, 0.5, 64, away_wait_s=3.0)
    g.set_expected({"A", "B"}, 0.0)
    g.set_away("B", 0.0)  # B dropped its stream (set_away first, so its groups keep waiting) ...
    assert g.set_expected({"A"}, 0.0) == []
    g.add(view("A", 1, 1000), 0.1)
    assert g.expire(1.0) == []  # past max_wait, but B is expected back
    assert g.next_deadline() == pytest.approx(3.0)
    g.set_expected({"A", "B"}, 2.0)  # ... B is back and sends its backlog
    (group,) = g.add(view("B", 1, 1004), 2.0)
    assert group.cameras == ("A", "B") and group.complete
    g.set_away("B", 2.5)
    g.set_expected({"A"}, 2.5)
    g.add(view("A", 2, 1100), 2.6)
    (alone,) = g.expire(5.5)  # B did not come back within 3 s
    assert alone.cameras == ("A",) and not alone.complete and not g.awaiting


def test_the_server_and_mvic_codec_decode_form_the_same_view_sets():
    """One match rule (mvic.shared.view_sets): given the same views in the same order, the live grouper and the batch
    grouping of mvic-codec decode agree, also where the nearest and the earliest fitting set differ."""
    from mvic.shared.bitstream import ViewHeader
    from mvic.shared.codec.grouping import group_headers

    rng = np.random.default_rng(3)
    captures = [("A", 1000), ("A", 1030), ("B", 1040)]  # B: 40 ms from the first set, 10 from the second
    captures += [(cam, 2000 + 35 * i + int(rng.integers(-25, 25))) for i in range(12) for cam in "ABC"]
    captures.sort(key=lambda c: c[1])
    g = Grouper("", 60 * MS, 10.0, max_open=1000)  # nobody expected: only flush emits
    for seq, (cam, t) in enumerate(captures, 1):
        assert g.add(view(cam, seq, t), 0.0) == []
    live = sorted(tuple(sorted((v.camera_id, v.capture_ns) for v in s.views)) for s in g.flush(1.0))
    headers = [ViewHeader(3, b"\0" * 8, 0, cam, 1, t * MS, 64, 96, 0, 32, 0) for cam, t in captures]
    batch = sorted(tuple(sorted((captures[i][0], captures[i][1] * MS) for i in s.members))
                   for s in group_headers(headers, 60 * MS))
    assert live == batch and len(batch) > 10
    assert (("A", 1030 * MS), ("B", 1040 * MS)) in batch  # the nearest set, not the earliest
