"""FusionCore driven directly, like the grouper: sessions without sockets, an injected clock, the tiny model on CPU.

Every test runs the core on its own event loop (``asyncio.run``); a frame enters through ``receive`` and leaves as
events in its camera's ``Session`` outbox. ``wait_idle`` says when every dispatched view set has left, so the tests
assert on the outbox and the ack book without waiting a fixed time.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from mvic.fusion_server import acks as acks_module
from mvic.fusion_server.acks import JOURNAL_NAME
from mvic.fusion_server.core import FusionCore
from mvic.fusion_server.decoder import GroupDecoder
from mvic.fusion_server.errors import (
    DecodeFailedError,
    MalformedPacketError,
    OutOfOrderError,
    StorageError,
    TooManyCamerasError,
)
from mvic.fusion_server.live import LiveView
from mvic.fusion_server.metrics import ServerMetrics
from mvic.fusion_server.records import AckEvent, CloseEvent, IncomingPacket, RejectEvent
from mvic.fusion_server.sinks import FrameSinks
from mvic.shared.bitstream import FORMAT_VERSION, pack, unpack
from mvic.shared.codec.registry import load_model
from mvic.shared.rpc.hello import Hello
from tests.fusion_server.harness import server_config

WALL_NS = 1_800_000_000_000_000_000


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakySinks(FrameSinks):
    """PNG sinks whose first ``failures`` writes fail as on a full disk."""

    def __init__(self, out_dir, failures: int = 1):
        super().__init__(out_dir)
        self.failures = failures

    def write(self, frames) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        super().write(frames)


@pytest.fixture(scope="module")
def decoder(weights):
    return GroupDecoder(load_model(weights))


@pytest.fixture
def make_core(tmp_path, weights, decoder):
    """make_core(**config changes, sinks=...) -> (core, clock, registry); run inside the test's event loop."""

    def make(sinks=None, **changes):
        config = server_config(tmp_path / "out", weights, **changes)
        registry = CollectorRegistry()
        clock = Clock()
        core = FusionCore(config, ServerMetrics(registry), LiveView(config.max_cameras), server_version="test",
                          clock=clock, wall_ns=lambda: WALL_NS, sinks=sinks)
        return core, clock, registry

    return make


async def started(core: FusionCore, decoder: GroupDecoder) -> FusionCore:
    await core.start()
    core.attach_decoder(decoder)
    return core


async def finish(core: FusionCore) -> None:
    await core.drain(10)
    await core.stop()


def hello(encoder, camera: str, group: str = "") -> Hello:
    return Hello(camera_id=camera, group_id=group, model_id=encoder.spec.model_id, weights_hash=encoder.weights_hash,
                 format_version=FORMAT_VERSION, node_version="test", session_ns=1)


def packet(item, sequence: int | None = None, bitstream: bytes | None = None) -> IncomingPacket:
    seq, capture_ns, bits = item
    return IncomingPacket(seq if sequence is None else sequence, capture_ns, 0,
                          bits if bitstream is None else bitstream, WALL_NS)


async def deliver(core: FusionCore, session, items) -> int:
    """Receive ``items`` on ``session``, let every decode finish, and return the last ack the session got."""
    for item in items:
        await core.receive(session, packet(item))
    await core.wait_idle()
    return acks_of(session.take_events())[-1]


def damaged(item) -> bytes:
    """The same packet with flipped payload bits: it parses, only the entropy decoder can tell."""
    view = unpack(item[2])
    stream = bytearray(view.streams[0])
    for i in range(4, len(stream), 7):
        stream[i] ^= 0x5A
    return pack(replace(view, streams=(bytes(stream),)))


async def next_event(session, timeout: float = 30.0):
    return await asyncio.wait_for(session.next_event(), timeout)


def acks_of(events) -> list[int]:
    return [e.acked_sequence for e in events if isinstance(e, AckEvent)]


def journal(tmp_path) -> dict[str, int]:
    return json.loads((tmp_path / "out" / JOURNAL_NAME).read_text())["cameras"]


def sample(registry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_a_frame_enters_once_and_leaves_once(make_core, decoder, encoder, views, tmp_path):
    async def run():
        core, _, registry = make_core()
        await started(core, decoder)
        sessions = {}
        for cam in ("C1", "C2", "C3"):
            sessions[cam], welcome = await core.connect(hello(encoder, cam))
            assert (welcome.acked_sequence, welcome.has_acked) == (0, False)
        for i in range(2):
            for cam, session in sessions.items():
                await core.receive(session, packet(views[cam][i]))
        await core.wait_idle()
        assert {cam: acks_of(s.take_events())[-1] for cam, s in sessions.items()} == {"C1": 2, "C2": 2, "C3": 2}
        await core.receive(sessions["C1"], packet(views["C1"][0]))  # a resend of a stored frame: acked again
        assert sessions["C1"].take_events() == [AckEvent(2)]
        await finish(core)
        return registry

    registry = asyncio.run(run())
    assert journal(tmp_path) == {"C1": 2, "C2": 2, "C3": 2}
    assert sample(registry, "mvic_server_groups_decoded_total", outcome="complete") == 2  # joint view sets of 3
    assert sample(registry, "mvic_server_frames_written_total", camera="C1") == 2  # the resend never decoded
    assert sample(registry, "mvic_server_duplicates_dropped_total", camera="C1") == 1


def test_a_rejected_packet_leaves_no_trace(make_core, decoder, encoder, views, tmp_path):
    """Issue 13, defect 3: a garbage packet numbered 2^64-1 neither moves the ack nor raises the sequence floor."""

    async def run():
        core, _, registry = make_core()
        await started(core, decoder)
        session, _ = await core.connect(hello(encoder, "C1"))
        await core.receive(session, packet(views["C1"][0], sequence=2**64 - 1, bitstream=b"\0garbage"))
        (event,) = session.take_events()
        assert isinstance(event.error, MalformedPacketError) and event.error.sequence == 2**64 - 1
        assert core.acks.acked("C1") == 0 and not core.acks.holds_slot("C1")
        assert await deliver(core, session, views["C1"][:3]) == 3
        await finish(core)
        return registry

    registry = asyncio.run(run())
    assert journal(tmp_path) == {"C1": 3}
    assert sample(registry, "mvic_server_frames_written_total", camera="C1") == 3
    assert sample(registry, "mvic_server_packets_rejected_total", camera="C1", reason="malformed") == 1


def test_an_undecodable_frame_is_rejected_alone_and_holds_no_slot(make_core, decoder, encoder, views, tmp_path):
    """Issue 13, defect 5: a camera whose only frame cannot be decoded gives its slot back and is not journalled."""

    async def run():
        core, _, _ = make_core(max_cameras=1)
        await started(core, decoder)
        c1, _ = await core.connect(hello(encoder, "C1"))
        await core.receive(c1, packet(views["C1"][0], bitstream=damaged(views["C1"][0])))
        await core.wait_idle()
        (event,) = c1.take_events()
        assert isinstance(event, RejectEvent) and isinstance(event.error, DecodeFailedError)
        assert not core.acks.holds_slot("C1")
        await core.disconnect(c1)  # a camera that never delivered is not awaited after it leaves
        c2, _ = await core.connect(hello(encoder, "C2"))  # the one slot is free for a camera that delivers
        await core.receive(c2, packet(views["C2"][0]))
        await core.wait_idle()
        assert c2.take_events() == [AckEvent(1)]
        with pytest.raises(TooManyCamerasError):
            await core.connect(hello(encoder, "C3"))
        await finish(core)

    asyncio.run(run())
    assert journal(tmp_path) == {"C2": 1}


def test_a_failed_write_releases_the_frame_and_its_resend_is_written(make_core, decoder, encoder, views, tmp_path):
    """Issue 13, defect 4: the stream ends with a StorageError (UNAVAILABLE) instead of the frame staying in flight
    for good; after the reconnect the resend is decoded and written, and only then acked."""

    async def run():
        core, _, registry = make_core(sinks=FlakySinks(tmp_path / "out", failures=1))
        await started(core, decoder)
        session, _ = await core.connect(hello(encoder, "C1"))
        await core.receive(session, packet(views["C1"][0]))
        await core.wait_idle()
        (close,) = session.take_events()
        assert isinstance(close, CloseEvent) and isinstance(close.error, StorageError) and "resend" in str(close.error)
        await core.receive(session, packet(views["C1"][1]))  # the stream has ended: not admitted, not acked
        await core.disconnect(session)
        again, welcome = await core.connect(hello(encoder, "C1"))
        assert welcome.acked_sequence == 0
        assert await deliver(core, again, views["C1"][:3]) == 3
        await finish(core)
        return registry

    registry = asyncio.run(run())
    assert journal(tmp_path) == {"C1": 3}
    assert sorted(p.name for p in (tmp_path / "out" / "C1").glob("*.png")) == [f"{s:010d}.png" for s in (1, 2, 3)]
    assert sample(registry, "mvic_server_sink_errors_total") == 1
    assert sample(registry, "mvic_server_frames_written_total", camera="C1") == 3


def test_a_failed_journal_write_acks_nothing_and_the_resend_is_acked(make_core, decoder, encoder, views, tmp_path,
                                                                     monkeypatch):
    write = acks_module._write
    failures = []

    def full_once(path, body):
        if not failures:
            failures.append(path)
            raise OSError(28, "No space left on device")
        write(path, body)

    monkeypatch.setattr(acks_module, "_write", full_once)

    async def run():
        core, _, _ = make_core()
        await started(core, decoder)
        session, _ = await core.connect(hello(encoder, "C1"))
        await core.receive(session, packet(views["C1"][0]))
        await core.wait_idle()
        (close,) = session.take_events()
        assert isinstance(close.error, StorageError) and core.acks.acked("C1") == 0
        await core.disconnect(session)
        again, welcome = await core.connect(hello(encoder, "C1"))
        assert welcome.acked_sequence == 0
        await core.receive(again, packet(views["C1"][0]))
        await core.wait_idle()
        assert again.take_events() == [AckEvent(1)]
        await finish(core)

    asyncio.run(run())
    assert failures and journal(tmp_path) == {"C1": 1}


def test_sequences_below_the_last_admitted_are_out_of_order(make_core, decoder, encoder, views):
    async def run():
        core, _, _ = make_core()
        await started(core, decoder)
        session, _ = await core.connect(hello(encoder, "C1"))
        await core.receive(session, packet(views["C1"][2]))
        await core.receive(session, packet(views["C1"][1]))  # 2 after 3, never seen: refused
        await core.receive(session, packet(views["C1"][2]))  # 3 again while in flight or stored: dropped
        await core.wait_idle()
        events = session.take_events()
        assert [type(e.error) for e in events if isinstance(e, RejectEvent)] == [OutOfOrderError]
        assert acks_of(events) == [3]
        await finish(core)

    asyncio.run(run())


def test_after_a_restart_a_backlog_waits_past_max_wait_for_a_camera_still_reconnecting(make_core, decoder, encoder,
                                                                                     views, tmp_path):
    """The journal's cameras are awaited for away_wait_ms (here 5 s), not max_wait_ms (300 ms): with the clock in
    hand, C1's backlog is still open 1 s after it came, is decoded jointly when C2 is back, and a later backlog goes
    alone once the grace is over."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / JOURNAL_NAME).write_text(json.dumps({"version": 1, "cameras": {"C1": 1, "C2": 1},
                                                             "groups": {"C1": "", "C2": ""}}))

    async def run():
        core, clock, registry = make_core()
        await started(core, decoder)
        c1, welcome = await core.connect(hello(encoder, "C1"))
        assert (welcome.acked_sequence, welcome.has_acked) == (1, True)
        for i in (1, 2):
            await core.receive(c1, packet(views["C1"][i]))
        clock.now += 1.0  # past max_wait (0.3 s), within the away grace (5 s)
        await core.expire()
        await core.wait_idle()
        assert c1.take_events() == [] and sample(registry, "mvic_server_open_groups") == 2  # still waiting for C2
        c2, _ = await core.connect(hello(encoder, "C2"))
        for i in (1, 2):
            await core.receive(c2, packet(views["C2"][i]))
        await core.wait_idle()
        assert acks_of(c1.take_events())[-1] == 3 and acks_of(c2.take_events())[-1] == 3
        assert sample(registry, "mvic_server_groups_decoded_total", outcome="complete") == 2
        await core.disconnect(c2)  # a broken stream: C2 is awaited again for 5 s
        await core.receive(c1, packet(views["C1"][3]))
        clock.now += 4.0
        await core.expire()
        assert sample(registry, "mvic_server_open_groups") == 1
        clock.now += 1.5
        await core.expire()
        await core.wait_idle()
        assert c1.take_events() == [AckEvent(4)]
        assert sample(registry, "mvic_server_groups_decoded_total", outcome="partial") == 1
        await finish(core)

    asyncio.run(run())


def test_half_close_ends_the_stream_once_every_frame_has_left(make_core, decoder, encoder, views):
    async def run():
        core, _, _ = make_core()
        await started(core, decoder)
        session, _ = await core.connect(hello(encoder, "C1"))
        await core.receive(session, packet(views["C1"][0]))
        await core.receive(session, packet(views["C1"][1], bitstream=damaged(views["C1"][1])))
        await core.end_of_input(session)
        events = [await next_event(session), await next_event(session), await next_event(session)]
        assert {type(e) for e in events[:2]} == {AckEvent, RejectEvent} and events[2] == CloseEvent(
            "the node ended its stream and every frame is acknowledged")
        assert acks_of(events) == [1] and events[0 if isinstance(events[0], RejectEvent) else 1].error.sequence == 2
        await finish(core)

    asyncio.run(run())


def test_a_stream_that_ends_while_waiting_for_a_decode_slot_loses_no_view_set(make_core, decoder, encoder, views):
    """The grouper let the set go before the stream ended: it must still be decoded, or its views stay in flight
    and the camera's ack sticks below them forever (found by the fault-proxy tests)."""
    async def run():
        core, _, _ = make_core(cameras=("C1",))
        core.config = replace(core.config, decode=replace(core.config.decode, max_inflight_groups=1))
        core._slots = asyncio.Semaphore(1)  # as FusionCore.__init__ builds it for max_inflight_groups=1
        await started(core, decoder)
        session, _ = await core.connect(hello(encoder, "C1"))
        c1 = views["C1"]
        await core.receive(session, packet(c1[0]))  # set 1 takes the only decode slot
        reader = asyncio.create_task(core.receive(session, packet(c1[1])))  # set 2 waits for the slot ...
        await asyncio.sleep(0)
        reader.cancel()  # ... when the stream ends (the servicer cancels its reader task)
        await asyncio.gather(reader, return_exceptions=True)
        await core.wait_idle()
        await core.disconnect(session)
        session, _ = await core.connect(hello(encoder, "C1"))  # the node reconnects and resends what is unacked
        for item in c1[1:]:
            if core.acks.acked("C1") < item[0]:
                await core.receive(session, packet(item))
        await core.wait_idle()
        return core.acks.acked("C1")

    assert asyncio.run(run()) == len(views["C1"])
