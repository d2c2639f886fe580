"""The ack book: cumulative acks over out-of-order completion, the one sequence check, slots, and the journal."""

from __future__ import annotations

import asyncio
import json

import pytest

from mvic.fusion_server import acks as acks_module
from mvic.fusion_server.acks import JOURNAL_NAME, AckBook, Admission
from mvic.fusion_server.errors import AckJournalError, TooManyCamerasError


def commit(book: AckBook) -> acks_module.Commit:
    return asyncio.run(book.commit())


def test_ack_waits_for_the_oldest_frame_in_flight(tmp_path):
    book = AckBook(tmp_path)
    for s in (1, 2, 3):
        book.admit("C1", "", s)
    book.stored("C1", 2)
    assert commit(book).acked == {} and book.acked("C1") == 0
    book.stored("C1", 1)
    assert commit(book).acked == {"C1": 2}
    book.stored("C1", 3)
    assert commit(book).acked == {"C1": 3} and book.unsettled("C1") == 0


def test_the_one_sequence_check(tmp_path):
    book = AckBook(tmp_path)
    assert book.classify("C1", 7) is Admission.NEW  # an unknown camera: anything may come first
    for s in (2, 4, 5):
        book.admit("C1", "", s)
    book.stored("C1", 2)
    book.stored("C1", 5)
    commit(book)  # the ack moves to 2; 5 waits behind 4
    assert [book.classify("C1", s) for s in (1, 2, 3, 4, 5, 6)] == [
        Admission.ACKED, Admission.ACKED, Admission.OUT_OF_ORDER, Admission.PENDING, Admission.PENDING, Admission.NEW]
    with pytest.raises(ValueError):
        book.admit("C1", "", 4)  # in flight: admitted once


def test_gaps_are_covered_and_a_rejection_never_moves_the_ack(tmp_path):
    book = AckBook(tmp_path)
    book.admit("C1", "", 12)  # the node skipped 1..11 (or they were refused before admission)
    book.stored("C1", 12)
    assert commit(book).acked == {"C1": 12}
    book.admit("C1", "", 13)
    book.reject("C1", 13)  # decoding failed for good: the ack stays where the stored frames are
    assert commit(book).acked == {} and book.acked("C1") == 12 and book.unsettled("C1") == 0
    book.admit("C1", "", 14)
    book.stored("C1", 14)
    assert commit(book).acked == {"C1": 14}  # a later stored frame covers the rejected one


def test_a_released_frame_holds_the_ack_until_its_resend_is_stored(tmp_path):
    """Issue 13, defect 4 (unit): a failed write leaves no frame in flight forever."""
    book = AckBook(tmp_path)
    for s in (1, 2, 3):
        book.admit("C1", "", s)
    book.stored("C1", 1)
    book.release("C1", 2)  # its PNG could not be written
    book.stored("C1", 3)
    assert commit(book).acked == {"C1": 1}  # not over 2, which is not on disk
    assert book.classify("C1", 2) is Admission.NEW and book.classify("C1", 3) is Admission.PENDING
    book.admit("C1", "", 2)  # the resend
    book.stored("C1", 2)
    assert commit(book).acked == {"C1": 3}


def test_a_camera_takes_a_slot_with_its_first_admitted_frame_and_frees_it_if_nothing_is_stored(tmp_path):
    book = AckBook(tmp_path, max_cameras=2)
    assert book.has_room("X1") and not book.holds_slot("X1")
    book.admit("C1", "", 1)
    book.admit("X1", "", 1)
    assert not book.has_room("C2") and book.has_room("C1")
    with pytest.raises(TooManyCamerasError, match="max_cameras"):
        book.admit("C2", "", 1)
    book.reject("X1", 1)  # X1's only frame could not be decoded: it gives its slot back, and leaves no trace
    assert book.has_room("C2") and not book.holds_slot("X1")
    book.stored("C1", 1)
    commit(book)
    assert json.loads((tmp_path / JOURNAL_NAME).read_text())["cameras"] == {"C1": 1}


def test_journal_round_trip(tmp_path):
    book = AckBook(tmp_path)
    assert book.load() == 0
    book.admit("C1", "g", 5)
    book.admit("C2", "", 3)
    book.stored("C1", 5)
    book.stored("C2", 3)
    commit(book)
    again = AckBook(tmp_path)
    assert again.load() == 2
    assert (again.acked("C1"), again.acked("C2"), again.journalled()) == (5, 3, {"C1": "g", "C2": ""})
    assert again.classify("C1", 5) is Admission.ACKED and again.classify("C1", 6) is Admission.NEW
    assert not list(tmp_path.glob("*.part"))


def test_a_failed_journal_write_moves_nothing_and_releases_the_frames(tmp_path, monkeypatch):
    book = AckBook(tmp_path)
    book.admit("C1", "", 1)
    book.stored("C1", 1)

    def disk_full(path, body):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(acks_module, "_write", disk_full)
    result = commit(book)
    assert result.acked == {} and result.released == ("C1",) and result.error.errno == 28
    assert book.acked("C1") == 0 and book.classify("C1", 1) is Admission.NEW  # the resend is decoded again
    monkeypatch.undo()
    book.admit("C1", "", 1)
    book.stored("C1", 1)
    assert commit(book).acked == {"C1": 1}


@pytest.mark.parametrize("text", ["{not json", '{"version": 1, "cameras": {"C1": -4}}', '{"version": 2}',
                                  '{"version": 1, "cameras": {"C1": 3}, "groups": {"C1": 7}}', "[]"])
def test_damaged_journal_says_what_to_do(tmp_path, text):
    (tmp_path / JOURNAL_NAME).write_text(text)
    with pytest.raises(AckJournalError, match="move it away"):
        AckBook(tmp_path).load()
