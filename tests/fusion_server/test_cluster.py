"""Several servers: the membership (resolve, probe, refresh), ownership in the core (refuse, rehome) and the
servicer's UNAVAILABLE + ``mvic-owner`` trailer, with fake resolvers where the network does not matter."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import pytest

from mvic.fusion_server.cluster import Membership, View, dns_name, probe, resolve, ring_key, static_members
from mvic.fusion_server.config import ClusterConfig, load_config
from mvic.fusion_server.errors import ConfigError, NotOwnerError
from mvic.fusion_server.records import AckEvent, CloseEvent
from mvic.fusion_server.ring import Ring
from mvic.fusion_server.status import status_for, trailers_for
from mvic.shared.rpc import OWNER_METADATA_KEY
from tests.fusion_server.harness import MiniNode, ServerThread, server_config
from tests.fusion_server import test_core
from tests.fusion_server.test_core import finish, hello, packet, started

decoder, make_core = test_core.decoder, test_core.make_core  # the core tests' fixtures

A, B, C = "10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"
GROUPS = [f"g{i}" for i in range(40)]


class FakeNet:
    """A resolver and a prober a test controls."""

    def __init__(self, members, alive):
        self.members, self.alive, self.fail = list(members), set(alive), False

    async def resolve(self, peers: str) -> list[str]:
        if self.fail:
            raise OSError("no such host")
        return list(self.members)

    async def probe(self, address: str, timeout_s: float) -> bool:
        return address in self.alive


def membership(net: FakeNet, me: str = A, on_change=None) -> Membership:
    config = ClusterConfig(peers="ipv4:" + ",".join(net.members), self=me, refresh_s=0.05, probe_timeout_s=0.05)
    return Membership(config, on_change, resolver=net.resolve, prober=net.probe)


def groups_of(m: Membership, address: str) -> list[str]:
    return [g for g in GROUPS if m.owner(g) == address]


# ------------------------------------------------------------------------------------------ parsing
def test_names_parse_into_grpc_ring_keys():
    assert ring_key("10.0.0.1", 50051) == "10.0.0.1:50051"
    assert ring_key("::1", 1) == ring_key("[0:0::1]", 1) == "[::1]:1"
    assert static_members("ipv4:10.0.0.1:1,10.0.0.2:2") == ["10.0.0.1:1", "10.0.0.2:2"]
    assert static_members("ipv6:[::1]:5,[fe80::0001]:6") == ["[::1]:5", "[fe80::1]:6"]
    assert static_members("dns:///svc:1") is None
    for name in ("dns:///svc.ns.svc.cluster.local:50051", "dns:svc.ns.svc.cluster.local:50051",
                 "dns://8.8.8.8/svc.ns.svc.cluster.local:50051", "svc.ns.svc.cluster.local:50051"):
        assert dns_name(name) == ("svc.ns.svc.cluster.local", 50051)


def test_config_requires_self_with_peers_and_places_the_journal_per_server(tmp_path):
    with pytest.raises(ConfigError, match="^cluster.self"):
        load_config(None, {"cluster.peers": "ipv4:127.0.0.1:1,127.0.0.1:2"})
    with pytest.raises(ConfigError, match="^cluster.peers"):
        load_config(None, {"cluster.peers": "http://x", "cluster.self": "127.0.0.1:1"})
    with pytest.raises(ConfigError, match="^cluster.self"):
        load_config(None, {"cluster.self": "127.0.0.1:1"})
    c = load_config(None, {"cluster.peers": "ipv4:127.0.0.1:1,127.0.0.1:2", "cluster.self": "127.0.0.1:1",
                           "out": str(tmp_path)})
    assert c.journal_dir == tmp_path / ".servers" / "127.0.0.1_1"
    assert load_config(None, {"out": str(tmp_path)}).journal_dir == tmp_path
    named = load_config(None, {"cluster.peers": "ipv4:127.0.0.1:1,127.0.0.1:2", "cluster.self": "127.0.0.1:1",
                               "cluster.name": "mvic-server-0", "out": str(tmp_path)})
    assert named.journal_dir == tmp_path / ".servers" / "mvic-server-0"  # a restart with a new address finds it
    for bad in ("../x", "a/b", "x" * 64):
        with pytest.raises(ConfigError, match="^cluster.name"):
            load_config(None, {"cluster.peers": "ipv4:127.0.0.1:1", "cluster.self": "127.0.0.1:1",
                               "cluster.name": bad})
    with pytest.raises(ConfigError, match="^cluster.name: only used with cluster.peers"):
        load_config(None, {"cluster.name": "s0"})


# ---------------------------------------------------------------------------------------- membership
def test_membership_owns_what_the_ring_gives_it_and_calls_back_on_changes():
    async def run():
        net = FakeNet([A, B, C], {A, B, C})
        changes = []

        async def changed():
            changes.append(frozenset(m.view.alive))

        m = membership(net, on_change=changed)
        assert all(m.owns(g) for g in GROUPS)  # before the first refresh: alone, it owns everything
        assert await m.refresh() is True
        ring = Ring.build([A, B, C])
        assert {g: m.owner(g) for g in GROUPS} == {g: ring.owner(g) for g in GROUPS}
        assert groups_of(m, A) and groups_of(m, B) and groups_of(m, C)
        assert await m.refresh() is False  # nothing changed: no callback
        b_groups = groups_of(m, B)
        net.alive.discard(B)
        assert await m.refresh() is True
        assert all(m.owner(g) in (A, C) for g in b_groups)  # B's groups move; the others stay
        net.fail = True  # resolution fails: the last membership stays
        assert await m.refresh() is False and m.members == (A, B, C)
        net.fail, net.alive = False, set()  # nobody answers: self is alive all the same
        await m.refresh()
        assert all(m.owns(g) for g in GROUPS)
        assert changes[-1] == frozenset({A})
        net.members = [B, C]  # self not in the name's addresses: it owns nothing (a WARNING)
        net.alive = {B, C}
        await m.refresh()
        assert not any(m.owns(g) for g in GROUPS)

    asyncio.run(run())


def test_the_background_refresh_runs_until_stopped():
    async def run():
        net = FakeNet([A, B], {A})
        m = membership(net)
        await m.start()
        assert m.view.alive == {A}
        net.alive.add(B)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if B in m.view.alive:
                break
        await m.stop()
        assert m.view.alive == {A, B}

    asyncio.run(run())


def test_real_dns_resolution_and_tcp_probe():
    async def run():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            assert f"127.0.0.1:{port}" in await resolve(f"dns:///localhost:{port}")
            assert await resolve(f"ipv4:127.0.0.1:{port},127.0.0.1:1") == [f"127.0.0.1:{port}", "127.0.0.1:1"]
            assert await probe(f"127.0.0.1:{port}", 1.0)
        finally:
            server.close()
            await server.wait_closed()
        assert not await probe(f"127.0.0.1:{port}", 1.0)  # closed: refused at once

    asyncio.run(run())


# ---------------------------------------------------------------------------------------------- core
def test_core_refuses_groups_it_does_not_own_and_hands_over_moved_ones(make_core, decoder, encoder, views,
                                                                         tmp_path):
    """Frames admitted before a group moves are still decoded, written and acked here; the stream then ends with
    NotOwnerError naming the new owner; a Hello for the moved group is refused."""
    net = FakeNet([A, B], {A, B})
    probe_ring = View(Ring.build([A, B]), frozenset({A, B}))
    mine = next(g for g in GROUPS if probe_ring.owner(g) == A)
    theirs = next(g for g in GROUPS if probe_ring.owner(g) == B)

    async def run():
        core, _, registry = make_core(cluster=ClusterConfig(peers=f"ipv4:{A},{B}", self=A))
        core.membership = m = membership(net, on_change=core.rehome)
        await m.refresh()
        await started(core, decoder)
        with pytest.raises(NotOwnerError) as refused:
            await core.connect(hello(encoder, "C9", theirs))
        assert refused.value.owner == B and status_for(refused.value) == grpc.StatusCode.UNAVAILABLE
        assert trailers_for(refused.value) == ((OWNER_METADATA_KEY, B),)
        sessions = {cam: (await core.connect(hello(encoder, cam, mine)))[0] for cam in ("C1", "C2")}
        for cam, session in sessions.items():
            await core.receive(session, packet(views[cam][0]))
        await core.receive(sessions["C1"], packet(views["C1"][1]))  # an open view set waiting for C2
        m.view = View(Ring.build([A, B]), frozenset({B}))  # as if A no longer owned 'mine' (a ring that says so)
        await core.rehome()
        await core.wait_idle()
        for cam, session in sessions.items():
            events = session.take_events()
            assert isinstance(events[-1], CloseEvent) and isinstance(events[-1].error, NotOwnerError)
            assert events[-1].error.owner == B
            assert [e.acked_sequence for e in events if isinstance(e, AckEvent)][-1] == (2 if cam == "C1" else 1)
        await core.disconnect(sessions["C1"])
        await core.disconnect(sessions["C2"])
        with pytest.raises(NotOwnerError):
            await core.connect(hello(encoder, "C1", mine))
        await finish(core)
        return registry

    registry = asyncio.run(run())
    assert registry.get_sample_value("mvic_server_streams_moved_total") == 2
    assert (tmp_path / "out" / ".servers" / "10.0.0.1_50051" / "acks.json").is_file()
    assert not (tmp_path / "out" / "acks.json").exists()


# ------------------------------------------------------------------------------------------- servicer
def test_servicer_refuses_with_unavailable_and_the_owner_trailer(tmp_path, weights, encoder):
    other = socket.socket()  # a listening socket is an alive member to a TCP probe
    other.bind(("127.0.0.1", 0))
    other.listen()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    me, them = f"127.0.0.1:{port}", f"127.0.0.1:{other.getsockname()[1]}"
    ring = View(Ring.build([me, them]), frozenset({me, them}))
    theirs = next(g for g in GROUPS if ring.owner(g) == them)
    mine = next(g for g in GROUPS if ring.owner(g) == me)
    config = server_config(tmp_path / "out", weights, listen=me,
                           cluster=ClusterConfig(peers=f"ipv4:{me},{them}", self=me, refresh_s=0.5))
    server = ServerThread(config).start()
    try:
        node = MiniNode(server.port, "C1", encoder, group=theirs)
        error = node.refused()
        assert error.code() == grpc.StatusCode.UNAVAILABLE and them in error.details()
        assert dict(error.trailing_metadata())[OWNER_METADATA_KEY] == them
        node.close()
        node = MiniNode(server.port, "C2", encoder, group=mine)
        assert node.welcome().acked_sequence == 0
        other.close()  # 'them' dies: within a refresh, this server owns its groups too
        deadline = time.monotonic() + 10
        while not server.app.membership.owns(theirs) and time.monotonic() < deadline:
            time.sleep(0.05)
        late = MiniNode(server.port, "C3", encoder, group=theirs)
        assert late.welcome().acked_sequence == 0
        late.close()
        node.close()
    finally:
        other.close()
        server.stop()


# ------------------------------------------------------------------------------------ shared output store
def test_two_servers_writing_one_frame_leave_one_whole_file(tmp_path):
    """During a group move the old and the new owner may write the same PNG at once: each renames its own whole
    file (a writer that loses the race raises OSError: its frame is resent, never acknowledged half written); a
    dead writer's partial file is removed by the next write of that name."""
    import threading

    from mvic.shared.fileio import write_atomic

    target = tmp_path / "C1" / "0000000001.png"
    contents = (b"A" * 300_000, b"B" * 200_000)
    def write(data: bytes, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            write_atomic(target, data, durable=False)
        except OSError:
            pass  # lost the rename to the other writer

    for _ in range(30):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=write, args=(c, barrier)) for c in contents]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert target.read_bytes() in contents
    (target.parent / (target.name + ".part")).write_bytes(b"half")  # a writer killed mid-write
    time.sleep(0.01)
    write_atomic(target, contents[0])
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_a_frame_released_here_and_stored_elsewhere_stops_holding_the_ack(make_core, decoder, encoder, views):
    """A write fails, the frame is released and its stream ends; the node reconnects elsewhere, that server stores the
    frame, and the group comes back here: the node resumes above the released frame, which must not block the acks
    of this server for ever."""

    async def scenario():
        core, _, _ = make_core()
        core.sinks = test_core.FlakySinks(core.sinks.out_dir, failures=1)
        await started(core, decoder)
        first, _ = await core.connect(hello(encoder, "C1"))
        await core.receive(first, packet(views["C1"][0]))  # its write fails: released, the stream ends
        await core.wait_idle()
        assert isinstance(first.take_events()[-1], CloseEvent)
        await core.disconnect(first)
        again, welcome = await core.connect(hello(encoder, "C1"))
        assert welcome.acked_sequence == 0
        for item in views["C1"][2:4]:  # 1 and 2 were acknowledged by another server meanwhile
            await core.receive(again, packet(item))
        await core.wait_idle()
        acks = [e.acked_sequence for e in again.take_events() if isinstance(e, AckEvent)]
        await finish(core)
        return acks

    assert asyncio.run(scenario())[-1] == 4
