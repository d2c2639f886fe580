"""Cumulative acks over out-of-order completion, and the durable journal."""

from __future__ import annotations

import pytest

from mvic.fusion_server.acks import AckJournal, AckTracker


def test_ack_waits_for_the_oldest_frame_in_flight():
    t = AckTracker()
    for s in (1, 2, 3):
        t.admit(s)
    assert not t.finish(2) and t.acked == 0
    assert t.finish(1) and t.acked == 2
    assert t.finish(3) and t.acked == 3 and t.in_flight == 0


def test_gaps_and_rejections_are_covered():
    t = AckTracker(acked=10)
    t.admit(12)  # the node skipped 11
    assert t.finish(12) and t.acked == 12
    assert t.finish(13) and t.acked == 13  # rejected at receive: never admitted, finished for good
    with pytest.raises(ValueError):
        t.admit(13)


def test_journal_round_trip_never_lowers(tmp_path):
    j = AckJournal(tmp_path)
    assert j.load() == {}
    j.save({"C1": 5, "C2": 3})
    j.save({"C1": 4})
    assert AckJournal(tmp_path).load() == {"C1": 5, "C2": 3}
    assert not list(tmp_path.glob("*.part"))


def test_damaged_journal_says_what_to_do(tmp_path):
    (tmp_path / "acks.json").write_text("{not json")
    with pytest.raises(ValueError, match="move it away"):
        AckJournal(tmp_path).load()
