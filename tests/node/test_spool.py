"""The on-disk spool: durable, bounded in bytes, ordered, resumable across restarts."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest

from mvic.node.capture import CaptureSchedule
from mvic.node.errors import ImplausibleAckError, NodeError
from mvic.node.metrics import NodeMetrics
from mvic.node.spool import Spool, SpoolError
from mvic.shared.bitstream import ViewBitstream, ViewHeader, pack

HASH = bytes(range(8))


def packet(seq: int, size: int = 1000, camera: str = "C1", model_id: int = 0xF001, weights_hash: bytes = HASH) -> bytes:
    header = ViewHeader(model_id, weights_hash, 2, camera, seq, 1_000_000 + seq, 64, 64, 0, 0, 0)
    return pack(ViewBitstream(header, (bytes([seq % 256]) * size,)))


def open_spool(tmp_path, max_bytes=1 << 20, when_full="drop-oldest", keep=None, metrics=None,
               schedule=None) -> Spool:
    spool = Spool(tmp_path / "spool", "C1", max_bytes, when_full, metrics or NodeMetrics("C1"), keep=keep,
                  schedule=schedule)
    spool.open()
    return spool


def fill(spool: Spool, n: int, size: int = 1000, sent: bool = True) -> list[int]:
    """Spool ``n`` packets; ``sent``: and mark them sent, as the link does before handing them to gRPC."""
    seqs = []
    for _ in range(n):
        seq = spool.next_sequence()
        assert spool.put(seq, 1_000_000 + seq, packet(seq, size), threading.Event())
        if sent:
            spool.mark_sent(seq)
        seqs.append(seq)
    return seqs


def test_sequences_start_at_one_and_packets_are_read_back(tmp_path):
    spool = open_spool(tmp_path)
    assert fill(spool, 3) == [1, 2, 3]
    assert spool.next_after(0).sequence == 1 and spool.next_after(2).sequence == 3
    assert spool.next_after(3) is None
    assert spool.read(2) == packet(2)
    assert spool.count_through(2) == 2


def test_listeners_hear_of_every_change(tmp_path):
    spool = open_spool(tmp_path)
    heard = []
    spool.add_listener(lambda: heard.append(spool.sequences()))
    fill(spool, 2)
    spool.ack(1)
    spool.discard(2, "rejected")
    assert heard == [[1], [1, 2], [2], []]


def test_cumulative_ack_and_reject_delete_files(tmp_path):
    metrics = NodeMetrics("C1")
    spool = open_spool(tmp_path, metrics=metrics)
    fill(spool, 5)
    removed = spool.ack(2)
    assert [p.sequence for p in removed] == [1, 2]
    assert spool.discard(4, "rejected").sequence == 4
    assert spool.sequences() == [3, 5]
    assert sorted(p.name.split("-")[0].lstrip("0") for p in spool.folder.glob("*.mvic")) == ["3", "5"]
    assert metrics.dropped_count("rejected") == 1
    assert metrics.value("mvic_node_spool_packets") == 2


def test_survives_restart_and_numbering_continues(tmp_path):
    spool = open_spool(tmp_path)
    fill(spool, 4)
    spool.ack(2)
    spool.close()
    (spool.folder / "00000000000000000009-1.mvic.part").write_bytes(b"half")  # a write cut by a crash
    again = open_spool(tmp_path)
    assert again.sequences() == [3, 4]
    assert again.read(3) == packet(3)
    assert not list(again.folder.glob("*.part"))
    assert again.next_sequence() == 5
    # every packet acked and deleted: the numbering still never goes back
    again.ack(4)
    again.close()
    third = open_spool(tmp_path)
    assert third.pending == 0 and third.next_sequence() == 6


def test_numbering_continues_after_a_crash_without_close(tmp_path):
    spool = open_spool(tmp_path)
    fill(spool, 3)
    spool.ack(3)  # state.json is written before the highest packet file is deleted
    # no close(): simulate a crash by releasing the lock only
    import os
    os.close(spool._lock_fd)
    again = open_spool(tmp_path)
    assert again.next_sequence() == 4


SCHEDULE = CaptureSchedule("cam1.mp4", 1_000_000, 2.0, "native")


def crash(spool: Spool) -> None:
    """End a spool like a killed process: no close(), only the lock released."""
    import os
    os.close(spool._lock_fd)


def test_capture_position_survives_restarts_for_the_same_schedule_only(tmp_path):
    spool = open_spool(tmp_path, schedule=SCHEDULE)
    assert spool.resumed_capture_ns is None  # a new schedule
    fill(spool, 3)  # capture times 1_000_001 .. 1_000_003
    spool.close()
    again = open_spool(tmp_path, schedule=SCHEDULE)
    assert again.resumed_capture_ns == 1_000_003 and again.sequences() == [1, 2, 3]
    again.ack(3)  # every packet deleted: state.json still holds the capture time
    crash(again)
    third = open_spool(tmp_path, schedule=CaptureSchedule(**SCHEDULE.to_json()))
    assert third.resumed_capture_ns == 1_000_003 and third.next_sequence() == 4
    third.close()
    for other in (replace(SCHEDULE, start_at_ns=7), replace(SCHEDULE, uri="cam2.mp4"), None):
        moved = open_spool(tmp_path, schedule=other)
        assert moved.resumed_capture_ns is None, other
        moved.close()


def test_capture_position_of_packets_spooled_just_before_a_crash(tmp_path):
    spool = open_spool(tmp_path, schedule=SCHEDULE)
    fill(spool, 2)
    crash(spool)  # state.json was written at open only: the packet names tell how far capture went
    again = open_spool(tmp_path, schedule=SCHEDULE)
    assert again.resumed_capture_ns == 1_000_002
    assert fill(again, 1) == [3]
    again.ack(3)  # deleting packet 3 writes state.json first, since it does not cover 1_000_003 yet
    crash(again)
    assert open_spool(tmp_path, schedule=SCHEDULE).resumed_capture_ns == 1_000_003


def test_packets_of_an_earlier_schedule_do_not_count(tmp_path):
    spool = open_spool(tmp_path, schedule=replace(SCHEDULE, start_at_ns=9))
    fill(spool, 2)  # unacked, left in the spool
    spool.close()
    new = open_spool(tmp_path, schedule=SCHEDULE)
    assert new.resumed_capture_ns is None and new.sequences() == [1, 2]
    crash(new)
    assert open_spool(tmp_path, schedule=SCHEDULE).resumed_capture_ns is None


def test_bounded_drop_oldest_counts_and_keeps_newest(tmp_path):
    metrics = NodeMetrics("C1")
    size = len(packet(1, 10_000))
    spool = open_spool(tmp_path, max_bytes=3 * size, metrics=metrics)
    fill(spool, 5, 10_000)
    assert spool.sequences() == [3, 4, 5]
    assert spool.bytes <= 3 * size
    assert metrics.dropped_count("spool_full") == 2


def test_bounded_block_waits_for_acks(tmp_path):
    size = len(packet(1, 10_000))
    spool = open_spool(tmp_path, max_bytes=2 * size, when_full="block")
    fill(spool, 2, 10_000)
    seq = spool.next_sequence()
    done = threading.Event()
    threading.Thread(target=lambda: (spool.put(seq, 0, packet(seq, 10_000), threading.Event()), done.set())).start()
    assert not done.wait(0.3)  # full: the encoder (and then capture) waits
    spool.ack(1)
    assert done.wait(2)
    assert spool.sequences() == [2, 3]


def test_block_drops_the_new_packet_when_stopping(tmp_path):
    metrics = NodeMetrics("C1")
    size = len(packet(1, 10_000))
    spool = open_spool(tmp_path, max_bytes=size, when_full="block", metrics=metrics)
    fill(spool, 1, 10_000)
    stop = threading.Event()
    stop.set()
    assert not spool.put(2, 0, packet(2, 10_000), stop)
    assert spool.sequences() == [1] and metrics.dropped_count("spool_full") == 1


def test_restart_drops_corrupt_and_stale_model_packets(tmp_path):
    metrics = NodeMetrics("C1")
    spool = open_spool(tmp_path)
    fill(spool, 3)
    spool.close()
    path = next(spool.folder.glob("00000000000000000002-*.mvic"))
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")  # damaged on disk
    other = packet(4, model_id=0xF002)
    (spool.folder / "00000000000000000004-1000004.mvic").write_bytes(other)

    def keep(header):
        return None if header.model_id == 0xF001 else "other model"

    again = open_spool(tmp_path, keep=keep, metrics=metrics)
    assert again.sequences() == [1, 3]
    assert metrics.dropped_count("corrupt") == 1 and metrics.dropped_count("stale_model") == 1
    assert again.next_sequence() == 5  # numbers of deleted packets are not reused


def test_an_ack_above_what_was_sent_deletes_nothing_and_does_not_renumber(tmp_path):
    """Issue 13: a server claiming more than the node sent (here "stored up to 2**64-1") must not delete spooled
    packets it never received, nor move the numbering (the old server_acked renumbered to 2**64)."""
    spool = open_spool(tmp_path)
    fill(spool, 3, sent=False)
    assert spool.sent_sequence == 0  # nothing handed to the link yet
    with pytest.raises(ImplausibleAckError) as info:
        spool.ack(2**64 - 1)
    assert isinstance(info.value, NodeError) and (info.value.acked, info.value.sent) == (2**64 - 1, 0)
    assert "nothing was deleted" in str(info.value) and "--camera" in str(info.value)
    assert spool.sequences() == [1, 2, 3] and spool.acked_sequence == 0
    assert len(list(spool.folder.glob("*.mvic"))) == 3
    spool.mark_sent(1)
    spool.mark_sent(2)
    with pytest.raises(ImplausibleAckError):
        spool.ack(3)  # packet 3 is spooled but was never sent
    assert [p.sequence for p in spool.ack(2)] == [1, 2]  # what was sent can be acked
    assert spool.next_sequence() == 4  # numbering untouched
    spool.close()
    assert json.loads((spool.folder / "state.json").read_text())["last_sequence"] == 4


def test_after_a_restart_every_earlier_number_may_have_been_sent(tmp_path):
    spool = open_spool(tmp_path)
    fill(spool, 3, sent=False)  # a previous run may have sent all three before it died
    crash(spool)
    again = open_spool(tmp_path)
    assert again.sent_sequence == 3
    assert [p.sequence for p in again.ack(3)] == [1, 2, 3]  # the server's Welcome covering them is plausible
    with pytest.raises(ImplausibleAckError):
        again.ack(4)


def test_a_state_file_of_another_camera_stops_the_node_before_deleting_anything(tmp_path):
    spool = open_spool(tmp_path)
    fill(spool, 2)
    spool.close()
    state = json.loads((spool.folder / "state.json").read_text())
    (spool.folder / "state.json").write_text(json.dumps({**state, "camera": "C9"}))
    with pytest.raises(SpoolError, match="another --spool"):
        open_spool(tmp_path)
    assert len(list(spool.folder.glob("*.mvic"))) == 2
    (spool.folder / "state.json").write_text(json.dumps(state))
    assert open_spool(tmp_path).sequences() == [1, 2]  # the lock was released by the failed open


def test_the_folder_is_a_safe_name_of_the_camera_id(tmp_path):
    spool = Spool(tmp_path / "spool", "../lobby east", 1 << 20, "drop-oldest", NodeMetrics("C1"))
    assert spool.folder == tmp_path / "spool" / "_.._lobby_east"
    assert Spool(tmp_path / "spool", "C1", 1 << 20, "drop-oldest", NodeMetrics("C1")).folder.name == "C1"


def test_second_node_on_the_same_spool_is_refused(tmp_path):
    open_spool(tmp_path)
    with pytest.raises(SpoolError, match="locked"):
        open_spool(tmp_path)
