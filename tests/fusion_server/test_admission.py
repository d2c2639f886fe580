"""Bounded admission (issue 13, defects 7, 8 and 11): the pure policies, then the core driven as in test_core.py
(sessions without sockets, the clock in the test's hand). The gRPC side (Hello deadline, streams per peer, status
codes and log lines) is in test_server.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from mvic.fusion_server.admission import DropCounts, PeerStreams, check_capture_time, peer_address
from mvic.fusion_server.config import AdmissionConfig
from mvic.fusion_server.core import FusionCore
from mvic.fusion_server.decoder import GroupDecoder
from mvic.fusion_server.errors import CaptureTimeError, StorageError, StreamTimeoutError, TooManyStreamsError
from mvic.fusion_server.live import LiveView
from mvic.fusion_server.metrics import ServerMetrics
from mvic.fusion_server.records import AckEvent, CloseEvent, RejectEvent
from mvic.fusion_server.status import error_code_for, status_for
from mvic.shared.bitstream import pack, unpack
from mvic.shared.codec.registry import load_model
from mvic.shared.rpc import mvic_pb2 as pb
from tests.fusion_server.harness import server_config
from tests.fusion_server.test_core import WALL_NS, Clock, acks_of, finish, hello, packet, sample, started

S = 1_000_000_000  # ns per second


# ------------------------------------------------------------------------------------------------- pure policies
@pytest.mark.parametrize("peer, address", [
    ("ipv4:10.0.0.7:51234", "10.0.0.7"),
    ("ipv6:[::1]:51234", "[::1]"),
    ("unix:/run/mvic.sock", "unix:/run/mvic.sock"),
    ("", ""),
])
def test_peer_address_drops_the_port(peer, address):
    assert peer_address(peer) == address


def test_peer_streams_are_bounded_per_address_and_given_back():
    peers = PeerStreams(2)
    peers.open("10.0.0.7"), peers.open("10.0.0.7"), peers.open("10.0.0.8")
    with pytest.raises(TooManyStreamsError, match="max_streams_per_peer"):
        peers.open("10.0.0.7")
    assert peers.count("10.0.0.7") == 2  # the refused stream is not counted
    peers.close("10.0.0.7")
    peers.open("10.0.0.7")
    for _ in range(3):
        peers.close("10.0.0.7")
    assert peers.count("10.0.0.7") == 0 and peers.count("10.0.0.8") == 1


@pytest.mark.parametrize("capture_ns, max_age_s, refused", [
    (WALL_NS, 0, False),
    (WALL_NS + 59 * S, 0, False),  # a camera clock up to the window ahead
    (WALL_NS + 61 * S, 0, True),
    (2**63, 0, True),
    (2**64 - 1, 0, True),
    (0, 0, False),  # any age while max_capture_age_s is 0: a spooled backlog
    (WALL_NS - 3600 * S, 86_400, False),
    (WALL_NS - 2 * 86_400 * S, 86_400, True),
])
def test_capture_window(capture_ns, max_age_s, refused):
    if not refused:
        check_capture_time(7, capture_ns, WALL_NS, 60.0, max_age_s)
        return
    with pytest.raises(CaptureTimeError) as info:
        check_capture_time(7, capture_ns, WALL_NS, 60.0, max_age_s)
    assert info.value.sequence == 7 and "NTP" in str(info.value) and "admission.max_capture_" in str(info.value)
    assert error_code_for(info.value) == pb.ERROR_CODE_MALFORMED and info.value.reason == "capture_time"


def test_drop_counts_exclude_after_max_drops_until_a_frame_is_stored():
    drops = DropCounts(3, capacity=2)
    for _ in range(2):
        drops.dropped("G")
    assert not drops.excluded("G")
    drops.dropped("G")
    assert drops.excluded("G")
    drops.delivered("G")
    assert not drops.excluded("G")
    never = DropCounts(0)
    for _ in range(10):
        never.dropped("G")
    assert not never.excluded("G")  # max_drops 0: awaited however often it drops
    for camera in ("A", "B", "C"):  # bounded: only the last `capacity` cameras that dropped are remembered
        for _ in range(3):
            drops.dropped(camera)
    assert not drops.excluded("A") and drops.excluded("B") and drops.excluded("C")


# ------------------------------------------------------------------------------------------------ the core
@pytest.fixture(scope="module")
def decoder(weights):
    return GroupDecoder(load_model(weights))


@pytest.fixture
def make_core(tmp_path, weights):
    """make_core(**config changes) -> (core, clock, registry), as in test_core.py."""

    def make(**changes):
        config = server_config(tmp_path / "out", weights, **changes)
        registry, clock = CollectorRegistry(), Clock()
        core = FusionCore(config, ServerMetrics(registry), LiveView(config.max_cameras), server_version="test",
                          clock=clock, wall_ns=lambda: WALL_NS)
        return core, clock, registry

    return make


def restamped(item, capture_ns: int) -> bytes:
    """The same view with another capture time in its header: a well-formed packet from a wrong clock."""
    view = unpack(item[2])
    return pack(replace(view, header=replace(view.header, capture_ns=capture_ns)))


@pytest.mark.parametrize("capture_ns", [2**63, WALL_NS + 3600 * S], ids=["2^63", "clock-an-hour-ahead"])
def test_a_view_from_the_future_is_refused_and_the_camera_keeps_grouping(make_core, decoder, encoder, views,
                                                                         capture_ns):
    """Issue 13, defect 7: one well-formed view stamped 2^63 ns (or from a clock an hour ahead) was admitted, and
    from then on the grouper took that camera as having moved past every timestamp: the others' views went out alone
    and its own waited alone (0 joint view sets). Now it is refused alone and nothing else changes."""

    async def run():
        core, _, registry = make_core()
        await started(core, decoder)
        sessions = {cam: (await core.connect(hello(encoder, cam)))[0] for cam in ("C1", "C2")}
        await core.receive(sessions["C1"], packet((1, capture_ns, restamped(views["C1"][0], capture_ns))))
        (event,) = sessions["C1"].take_events()
        assert isinstance(event, RejectEvent) and isinstance(event.error, CaptureTimeError)
        assert event.error.sequence == 1 and error_code_for(event.error) == pb.ERROR_CODE_MALFORMED
        for i in (1, 2, 3):
            for cam in ("C2", "C1"):  # the other camera's view first, as when its node is a little faster
                await core.receive(sessions[cam], packet(views[cam][i]))
        await core.wait_idle()
        assert {cam: acks_of(s.take_events())[-1] for cam, s in sessions.items()} == {"C1": 4, "C2": 4}
        await finish(core)
        return registry

    registry = asyncio.run(run())
    assert sample(registry, "mvic_server_groups_decoded_total", outcome="complete") == 3
    assert sample(registry, "mvic_server_groups_decoded_total", outcome="partial") == 0
    assert sample(registry, "mvic_server_packets_rejected_total", camera="C1", reason="capture_time") == 1


def test_a_camera_that_keeps_dropping_without_delivering_stops_holding_its_group(make_core, decoder, encoder, views):
    """Issue 13, defect 8: a client that connects as a camera of the group and drops again and again made every view
    set wait for it. After grouping.max_drops (3) broken streams without a frame stored, its group neither expects it
    while it is connected nor awaits it after it leaves: the others' view sets go out complete at once (the clock
    never moves here, so a view set that waited would never go out)."""

    async def run():
        core, _, registry = make_core()
        await started(core, decoder)
        c1, _ = await core.connect(hello(encoder, "C1"))
        c2, _ = await core.connect(hello(encoder, "C2"))
        for _ in range(3):
            ghost, _ = await core.connect(hello(encoder, "C3"))
            await core.disconnect(ghost)  # cancelled: input_done stays False
        ghost, _ = await core.connect(hello(encoder, "C3"))  # back again, and silent
        for i in (0, 1):
            for cam, session in (("C1", c1), ("C2", c2)):
                await core.receive(session, packet(views[cam][i]))
        await core.wait_idle()
        assert acks_of(c1.take_events())[-1] == 2 and acks_of(c2.take_events())[-1] == 2
        await core.disconnect(ghost)
        await finish(core)
        return registry

    registry = asyncio.run(run())
    assert sample(registry, "mvic_server_groups_decoded_total", outcome="complete") == 2


def test_a_camera_that_dropped_too_often_is_awaited_again_once_it_delivers(make_core, decoder, encoder, views):
    """The away variant of defect 8: C3 delivered, then its stream broke three times with nothing stored. The first
    two breaks keep its group waiting (away_wait_ms, a reconnect is expected), the third does not; once a frame of it
    is stored again its group waits for it as before."""

    async def run():
        core, _, registry = make_core()
        await started(core, decoder)
        s = {cam: (await core.connect(hello(encoder, cam)))[0] for cam in ("C1", "C2", "C3")}
        for cam in ("C1", "C2", "C3"):
            await core.receive(s[cam], packet(views[cam][0]))
        await core.wait_idle()
        assert acks_of(s["C3"].take_events()) == [1]  # C3 holds a slot: it delivered
        for drop in range(3):
            await core.disconnect(s["C3"])
            if drop < 2:
                assert core._groupers[""].awaiting  # an away camera is awaited (away_wait_ms)
                s["C3"], _ = await core.connect(hello(encoder, "C3"))
        assert not core._groupers[""].awaiting
        for cam in ("C1", "C2"):
            await core.receive(s[cam], packet(views[cam][1]))
        await core.wait_idle()
        assert acks_of(s["C1"].take_events())[-1] == 2  # not held for C3
        s["C3"], _ = await core.connect(hello(encoder, "C3"))
        for cam in ("C3", "C1", "C2"):  # C3 delivers again: joins the others' view set, stored
            await core.receive(s[cam], packet(views[cam][2]))
        await core.wait_idle()
        assert acks_of(s["C3"].take_events()) == [3]
        for cam in ("C1", "C2"):
            await core.receive(s[cam], packet(views[cam][3]))
        await core.wait_idle()
        await core.expire()
        assert acks_of(s["C1"].take_events()) == [3] and sample(registry, "mvic_server_open_groups") == 1
        await core.receive(s["C3"], packet(views["C3"][3]))  # the view set waited for it
        await core.wait_idle()
        assert acks_of(s["C1"].take_events()) == [4]
        await finish(core)
        return registry

    registry = asyncio.run(run())
    assert sample(registry, "mvic_server_groups_decoded_total", outcome="complete") == 4
    assert sample(registry, "mvic_server_groups_decoded_total", outcome="partial") == 0


def test_streams_the_server_ended_for_want_of_storage_are_not_drops(make_core, decoder, encoder, views):
    """A full disk ends every stream (StorageError): that is the server's fault, not the camera's, so the group keeps
    awaiting a camera however often it happens."""

    async def run():
        core, _, _ = make_core()
        await started(core, decoder)
        c1, _ = await core.connect(hello(encoder, "C1"))
        c2, _ = await core.connect(hello(encoder, "C2"))
        for cam, session in (("C1", c1), ("C2", c2)):
            await core.receive(session, packet(views[cam][0]))
        await core.wait_idle()
        for _ in range(4):
            c2.close("frames not stored", StorageError("disk full; reconnect"))
            await core.disconnect(c2)
            assert core._groupers[""].awaiting  # still awaited (away_wait_ms)
            c2, _ = await core.connect(hello(encoder, "C2"))
        await core.receive(c1, packet(views["C1"][1]))
        await core.wait_idle()
        assert acks_of(c1.take_events()) == [1]  # its view set waits for C2
        await core.receive(c2, packet(views["C2"][1]))
        await core.wait_idle()
        assert acks_of(c1.take_events()) == [2]
        await finish(core)

    asyncio.run(run())


def test_a_silent_stream_ends_after_the_idle_deadline(make_core, decoder, encoder, views):
    """Issue 13, defect 11 (after the Hello): a stream that sends nothing is ended after admission.idle_timeout_s
    with DEADLINE_EXCEEDED; one that sends within every deadline is not."""

    async def run():
        core, clock, _ = make_core(admission=replace(AdmissionConfig(), idle_timeout_s=30.0))
        await started(core, decoder)
        busy, _ = await core.connect(hello(encoder, "C1", group="a"))
        silent, _ = await core.connect(hello(encoder, "C2", group="b"))
        for i in range(3):
            clock.now += 20.0
            await core.receive(busy, packet(views["C1"][i]))
            await core.expire()
        await core.wait_idle()
        assert acks_of(busy.take_events())[-1] == 3
        (close,) = silent.take_events()
        assert isinstance(close, CloseEvent) and isinstance(close.error, StreamTimeoutError)
        assert status_for(close.error).name == "DEADLINE_EXCEEDED" and "admission.idle_timeout_s" in str(close.error)
        assert busy.take_events() == [] and not busy.closed
        await core.disconnect(silent)
        await finish(core)

    asyncio.run(run())


def test_the_ack_of_a_stored_frame_goes_out_before_an_idle_close(make_core, decoder, encoder, views):
    """The idle close is an ordinary close: acks already earned are sent first."""

    async def run():
        core, clock, _ = make_core(admission=replace(AdmissionConfig(), idle_timeout_s=5.0))
        await started(core, decoder)
        session, _ = await core.connect(hello(encoder, "C1"))
        await core.receive(session, packet(views["C1"][0]))
        await core.wait_idle()
        clock.now += 6.0
        await core.expire()
        events = session.take_events()
        assert events[0] == AckEvent(1) and isinstance(events[-1].error, StreamTimeoutError)
        await core.disconnect(session)
        await finish(core)

    asyncio.run(run())
