"""Which server of a cluster owns a camera group: the ring of gRPC's ``ring_hash`` load-balancing policy, rebuilt.

Hop before: ``cluster.Membership`` resolves the name the nodes connect to and probes each address.
Hop after: ``Ring.owner`` answers for the core (``core.FusionCore.connect``), which refuses a Hello for a group this
server does not own, and closes the streams of groups it stops owning.

The nodes' channels pick a server with gRPC core's ``ring_hash`` policy (gRFC A42, A61; the request hash comes from
the ``mvic-group`` header, gRFC A76), so a server must compute *exactly* the ring the client computes, or a node
would be sent to a server that refuses it. What this module reproduces (grpc ``src/core/load_balancing/ring_hash``):

* endpoints in resolver order, duplicates merged into one with the sum of their weights (weight 1 each here);
* each endpoint's hash key is its address as gRPC prints it (``127.0.0.1:50051``, ``[::1]:50051``);
* ``scale = min(ceil(min_w * min_ring_size) / min_w, max_ring_size)`` with normalized weights ``w = weight / sum``
  and ``min_ring_size`` / ``max_ring_size`` capped at 4096 (defaults 1024 / 4096); endpoint i gets ring entries
  ``XXH64("<key>_<n>", seed 0)`` for n = 0, 1, ... while a running count stays below the running sum of
  ``scale * w`` (doubles, as in C++), and the ring is sorted by hash;
* a request's hash is ``XXH64(header value, seed 0)``; the entry is found with ketama's signed binary search (the
  first entry whose hash is >= the request's, wrapping to entry 0), and the pick walks the ring from there to the
  first entry whose endpoint is not in TRANSIENT_FAILURE (the client waits on an endpoint that is IDLE or
  CONNECTING; a server counts an address as alive when a TCP connect to it succeeds, which is what makes the
  client's subchannel leave TRANSIENT_FAILURE).

Pure: no sockets, no asyncio. ``tests/fusion_server/test_ring.py`` checks the owner against real gRPC channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

import xxhash

#: gRPC's defaults (RingHashLbConfig, GRPC_ARG_RING_HASH_LB_RING_SIZE_CAP).
MIN_RING_SIZE = 1024
MAX_RING_SIZE = 4096
RING_SIZE_CAP = 4096


def xxh64(data: bytes | str) -> int:
    """XXH64 with seed 0, the hash gRPC uses for ring entries and request keys."""
    return xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data, seed=0)


@dataclass(frozen=True)
class Ring:
    """The sorted ring: ``hashes[i]`` is owned by ``endpoints[owners[i]]``."""

    endpoints: tuple[str, ...]  # distinct addresses, in resolver order
    hashes: tuple[int, ...]
    owners: tuple[int, ...]

    @classmethod
    def build(cls, addresses: Sequence[str], min_ring_size: int = MIN_RING_SIZE,
              max_ring_size: int = MAX_RING_SIZE) -> Ring:
        weights: dict[str, int] = {}
        for address in addresses:  # dict keeps the first occurrence's place: gRPC's de-dup does too
            weights[address] = weights.get(address, 0) + 1
        endpoints = tuple(weights)
        if not endpoints:
            return cls((), (), ())
        total = sum(weights.values())
        normalized = [weights[e] / total for e in endpoints]
        min_w = min(min(normalized), 1.0)
        low, high = min(min_ring_size, RING_SIZE_CAP), min(max_ring_size, RING_SIZE_CAP)
        scale = min(math.ceil(min_w * low) / min_w, float(high))
        entries: list[tuple[int, int]] = []
        current = target = 0.0
        for index, (endpoint, w) in enumerate(zip(endpoints, normalized)):
            target += scale * w
            count = 0
            while current < target:
                entries.append((xxh64(f"{endpoint}_{count}"), index))
                count += 1
                current += 1.0
        entries.sort(key=lambda e: e[0])
        return cls(endpoints, tuple(h for h, _ in entries), tuple(i for _, i in entries))

    def start_index(self, request_hash: int) -> int:
        """The ring entry a request hash lands on: gRPC's port of ketama_get_server, signed arithmetic and all."""
        size = len(self.hashes)
        low, high = 0, size
        while True:
            index = (low + high) // 2  # both >= 0 here, so floor division is C's truncation
            if index == size:
                return 0
            mid = self.hashes[index]
            below = 0 if index == 0 else self.hashes[index - 1]
            if below < request_hash <= mid:
                return index
            if mid < request_hash:
                low = index + 1
            else:
                high = index - 1
            if low > high:
                return 0

    def owner(self, key: bytes | str, alive: Container[str] | Callable[[str], bool] | None = None) -> str | None:
        """The address a ring_hash client sends a request with header value ``key`` to, when only the endpoints in
        ``alive`` (a set, or a predicate; None = all) can be connected; None when no endpoint is alive."""
        if not self.hashes:
            return None
        is_alive = alive if callable(alive) else (lambda e: True) if alive is None else alive.__contains__
        start, size = self.start_index(xxh64(key)), len(self.hashes)
        for step in range(size):
            endpoint = self.endpoints[self.owners[(start + step) % size]]
            if is_alive(endpoint):
                return endpoint
        return None
