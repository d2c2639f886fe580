"""The server's ring agrees with gRPC's own ring_hash policy: unit checks, then real loopback servers and a real
grpc.aio channel with the node's service config (every group lands on the ring's owner, also with one server down).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mvic.fusion_server.ring import Ring, xxh64
from mvic.shared.rpc import GROUP_METADATA_KEY, RING_HASH_HEADER_ENV, service_config

GROUPS = ["", "g0", "yard", "lobby-east", *[f"group-{i}" for i in range(120)]]


def test_xxh64_known_values():
    assert xxh64(b"") == 0xEF46DB3751D8E999  # the XXH64 test vector for the empty input, seed 0
    assert xxh64("abc") == xxh64(b"abc")


def test_ring_sizes_follow_grpc_scaling():
    ring = Ring.build([f"127.0.0.1:{5000 + i}" for i in range(3)])
    assert len(ring.hashes) == 1026  # ceil(1024/3) = 342 entries each
    assert [ring.owners.count(i) for i in range(3)] == [342, 342, 342]
    assert list(ring.hashes) == sorted(ring.hashes)
    assert len(Ring.build(["127.0.0.1:1"]).hashes) == 1024
    assert len(Ring.build([f"10.0.0.{i}:1" for i in range(10)]).hashes) == 1030


def test_duplicates_merge_and_order_does_not_matter_with_equal_weights():
    a, b, c = "10.0.0.1:50051", "10.0.0.2:50051", "[::1]:50051"
    assert Ring.build([a, b, c]).owner("x") == Ring.build([c, a, b]).owner("x")
    merged = Ring.build([a, b, a])  # a has weight 2: twice b's entries
    assert merged.endpoints == (a, b)
    assert merged.owners.count(0) == 2 * merged.owners.count(1)


def test_start_index_wraps_and_owner_skips_dead_endpoints():
    ring = Ring.build(["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"])
    assert ring.start_index(0) == 0
    assert ring.start_index(ring.hashes[-1] + 1) == 0  # past the last entry: wrap
    assert ring.start_index(ring.hashes[5]) == 5
    assert ring.start_index(ring.hashes[5] + 1) == 6
    owners = {g: ring.owner(g) for g in GROUPS}
    assert set(owners.values()) == set(ring.endpoints)  # 124 groups spread over all three
    dead = "10.0.0.2:1"
    alive = {e for e in ring.endpoints if e != dead}
    for g, owner in owners.items():
        moved = ring.owner(g, alive)
        assert moved == owner if owner != dead else moved in alive  # only the dead one's groups move
    assert ring.owner("x", set()) is None
    assert Ring.build([]).owner("x") is None


# ------------------------------------------------------------------------------------ against real gRPC
class _Who:
    """A server answering /mvic.test.Who/Am with its own address."""

    def __init__(self):
        self.server = grpc.aio.server()
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        handler = grpc.unary_unary_rpc_method_handler(self._am, request_deserializer=None,
                                                      response_serializer=None)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("mvic.test.Who",
                                                                                   {"Am": handler}),))

    async def _am(self, request: bytes, context) -> bytes:
        return self.address.encode()


async def _landings(target: str, groups) -> dict[str, str]:
    async with grpc.aio.insecure_channel(target, options=[("grpc.service_config", service_config())]) as channel:
        call = channel.unary_unary("/mvic.test.Who/Am")
        out = {}
        for group in groups:
            reply = await call(b"", metadata=((GROUP_METADATA_KEY, group),), timeout=10, wait_for_ready=False)
            out[group] = reply.decode()
        return out


def test_grpc_ring_hash_lands_on_the_rings_owner(monkeypatch):
    monkeypatch.setenv(RING_HASH_HEADER_ENV, "true")

    async def run():
        servers = [_Who() for _ in range(3)]
        for s in servers:
            await s.server.start()
        try:
            addresses = [s.address for s in servers]
            target = "ipv4:" + ",".join(addresses)
            ring = Ring.build(addresses)
            landed = await _landings(target, GROUPS)
            assert landed == {g: ring.owner(g) for g in GROUPS}
            assert len(set(landed.values())) == 3
            dead = servers[1]
            await dead.server.stop(None)
            alive = {s.address for s in servers if s is not dead}
            landed = await _landings(target, GROUPS)  # a fresh channel: the dead one is resolved, not reachable
            assert landed == {g: ring.owner(g, alive) for g in GROUPS}
            assert dead.address not in landed.values()
        finally:
            for s in servers:
                await s.server.stop(None)

    asyncio.run(run())


def test_service_config_names_the_policies():
    assert "ring_hash_experimental" in service_config() and GROUP_METADATA_KEY in service_config()
    assert "pick_first" in service_config("pick_first")
    with pytest.raises(ValueError):
        service_config("round_robin")
