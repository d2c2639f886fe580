"""The decode stages' fair order (issue 13, defect 2): an owner's backlog of expensive items holds another owner back
by at most the item being served."""

from __future__ import annotations

import pytest

from mvic.fusion_server.fair_queue import FairQueue

UHD, HD = 3840 * 2176, 640 * 384


def test_a_cheap_item_overtakes_an_expensive_backlog():
    q: FairQueue[str] = FairQueue()
    for i in range(10):
        q.push("A", UHD, f"A{i}")
    assert q.pop() == "A0"  # being served
    q.push("B", HD, "B0")
    assert q.pop() == "B0"  # first come first served would make it wait for A1..A9
    assert [q.pop() for _ in range(len(q))] == [f"A{i}" for i in range(1, 10)]


def test_owners_share_by_cost():
    """An owner of cheap items gets through as many pixels as one of expensive items, not as many items."""
    q: FairQueue[str] = FairQueue()
    for i in range(4):
        q.push("A", 4 * HD, f"A{i}")
    for i in range(16):
        q.push("B", HD, f"B{i}")
    order = [q.pop() for _ in range(len(q))]
    assert order[:6] == ["A0", "B0", "B1", "B2", "B3", "A1"]  # A's item, then as many pixels of B's (ties: first come)
    assert order.index("B15") < order.index("A3") + 5


def test_equal_owners_alternate_and_one_owner_keeps_its_order():
    q: FairQueue[str] = FairQueue()
    for i in range(3):
        q.push("A", 1, f"A{i}")
    for i in range(3):
        q.push("B", 1, f"B{i}")
    assert list(q) == ["A0", "B0", "A1", "B1", "A2", "B2"]  # iteration shows the order, takes nothing
    assert [q.pop() for _ in range(6)] == ["A0", "B0", "A1", "B1", "A2", "B2"]
    with pytest.raises(IndexError):
        q.pop()


def test_an_owner_back_from_idle_is_not_owed_its_idle_time():
    q: FairQueue[str] = FairQueue()
    q.push("B", 1, "B0")
    assert q.pop() == "B0"
    for i in range(5):
        q.push("A", 1, f"A{i}")
        assert q.pop() == f"A{i}"
    for i in range(3):
        q.push("A", 1, f"A{5 + i}")
    for i in range(3):
        q.push("B", 1, f"B{1 + i}")  # B was idle: it starts now (A's last item counts), not 5 turns ahead of A
    assert [q.pop() for _ in range(6)] == ["B1", "A5", "B2", "A6", "B3", "A7"]


def test_batches_take_the_next_item_and_the_following_ones_of_its_kind():
    q: FairQueue[tuple[str, int]] = FairQueue()
    for owner, shape in (("A", 1), ("B", 2), ("C", 1), ("D", 1), ("E", 2)):
        q.push(owner, 1, (owner, shape))
    assert q.pop_batch(2, lambda item: item[1]) == [("A", 1), ("C", 1)]
    assert q.pop_batch(4, lambda item: item[1]) == [("B", 2), ("E", 2)]
    assert q.pop_batch(4, lambda item: item[1]) == [("D", 1)]
    assert not q


def test_items_put_back_go_first_in_their_order_and_drain_empties():
    q: FairQueue[str] = FairQueue()
    for name in ("A0", "A1"):
        q.push("A", 1, name)
    q.push("B", 1, "B0")
    batch = q.pop_batch(2, lambda _: 0)
    assert batch == ["A0", "B0"]
    q.push("C", 1, "C0")  # idle until now: before A1, A's second item
    q.put_back(batch)
    assert q.drain() == ["A0", "B0", "C0", "A1"] and len(q) == 0
