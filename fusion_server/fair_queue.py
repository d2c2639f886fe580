"""Fair order for the decode stages: one camera's expensive view sets cannot hold back the others'.

Used by ``decoder.DecodePipeline`` for both of its queues (view sets waiting for a CPU worker, entropy-decoded parts
waiting for the device). Each item has an *owner* (the cameras whose views it holds) and a *cost* (pixels). Start-time
fair queueing (Goyal, Vin and Cheng, SIGCOMM 1996): an item's start tag is the later of the queue's virtual time
and its owner's previous finish tag, its finish tag is start + cost, and the item with the smallest start tag goes
next; the virtual time is the start tag of the item last taken. So owners share the decoder by pixels: an owner that
queued ten 4K views holds the others back by at most the one of its items being decoded, while a first-come order
would make them wait for all ten. Among equal tags, first come first served. Pure; no asyncio, no threads.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Items of several owners, taken in start-time fair order weighted by cost."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []  # (start tag, arrival, item)
        self._finish: dict[Hashable, float] = {}  # owner -> finish tag of its last item
        self._now = 0.0  # virtual time: start tag of the item last taken
        self._arrival = itertools.count()
        self._front = 0  # arrivals of items put back go below every other (put_back)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self):
        """The items in the order they would be taken."""
        return (item for _, _, item in sorted(self._heap, key=lambda e: e[:2]))

    def push(self, owner: Hashable, cost: float, item: T) -> None:
        start = max(self._now, self._finish.get(owner, self._now))
        self._finish[owner] = start + max(cost, 0.0)
        heapq.heappush(self._heap, (start, next(self._arrival), item))

    def pop(self) -> T:
        """The next item; IndexError when empty."""
        return self.pop_batch(1, lambda _: None)[0]

    def pop_batch(self, limit: int, kind: Callable[[T], Hashable]) -> list[T]:
        """The next item and up to ``limit - 1`` of the following ones of the same ``kind``, in fair order."""
        first = heapq.heappop(self._heap)
        self._now = first[0]
        batch, want = [first[2]], kind(first[2])
        if limit > 1:
            taken = [e for e in sorted(self._heap, key=lambda e: e[:2]) if kind(e[2]) == want][: limit - 1]
            if taken:
                ids = {id(e) for e in taken}
                self._heap = [e for e in self._heap if id(e) not in ids]
                heapq.heapify(self._heap)
                batch += [e[2] for e in taken]
        self._forget_idle()
        return batch

    def put_back(self, items: Iterable[T]) -> None:
        """Items taken but not served (the device failed under them): they go first again, in the order given."""
        items = list(items)
        self._front -= len(items)
        for i, item in enumerate(items):
            heapq.heappush(self._heap, (self._now, self._front + i, item))

    def drain(self) -> list[T]:
        """Every item, in fair order, leaving the queue empty (shutdown)."""
        items = list(self)
        self._heap.clear()
        return items

    def _forget_idle(self) -> None:
        """Owners whose last finish tag is behind the virtual time would start at the virtual time anyway."""
        if len(self._finish) > 2 * len(self._heap) + 16:
            self._finish = {o: f for o, f in self._finish.items() if f > self._now}
