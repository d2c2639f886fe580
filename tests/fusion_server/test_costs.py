"""What a view may cost the server (issue 13, defect 2): the cost is bounded by what was sent and what is allowed.

Driven through ``FusionCore`` like ``test_core``: a packet declaring a huge image in a few bytes is refused at receipt,
before any decoding; a view set is decoded in parts of bounded size; one camera's expensive views do not hold back
another camera's acks.
"""

from __future__ import annotations

import asyncio
import resource
import threading
import time
from dataclasses import replace

import pytest

from mvic.fusion_server.config import DecodeConfig, LimitsConfig
from mvic.fusion_server.decoder import GroupDecoder, decode_units
from mvic.fusion_server.errors import MalformedPacketError, ViewTooLargeError
from mvic.fusion_server.records import AckEvent, ReceivedView, RejectEvent, ViewSet
from mvic.fusion_server.status import error_code_for
from mvic.shared.bitstream import ViewBitstream, ViewHeader, pack, unpack
from mvic.shared.codec.registry import load_model
from mvic.shared.rpc import mvic_pb2 as pb
from tests.fusion_server.harness import T0, coded_views
from tests.fusion_server import test_core
from tests.fusion_server.test_core import acks_of, finish, hello, next_event, packet, sample, started

decoder = test_core.decoder  # fixtures: the tiny model's decoder, and make_core(**config changes)
make_core = test_core.make_core


def forged(encoder, camera: str, side: int, total_bytes: int) -> tuple[int, int, bytes]:
    """Issue 13's packet: a valid header declaring side x side pixels, and a few bytes of 'stream'."""
    header = ViewHeader(encoder.spec.model_id, encoder.weights_hash, 0, camera, 1, T0, side, side, 0, 0, 0)
    overhead = len(pack(ViewBitstream(header, (b"",))))
    bits = pack(ViewBitstream(header, (bytes(range(total_bytes - overhead)),)))
    assert len(bits) == total_bytes
    return 1, T0, bits


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@pytest.mark.parametrize("side, size, limits, error, reason", [
    (16384, 69, LimitsConfig(), ViewTooLargeError, "too_many_pixels"),  # over limits.max_view_pixels
    (16384, 69, LimitsConfig(16384**2, 16384**2), MalformedPacketError, "malformed"),  # allowed, but implausible
    (3072, 67, LimitsConfig(), MalformedPacketError, "malformed"),  # 4096x2304 pixels: just within the default
])
def test_a_few_bytes_declaring_a_huge_image_are_refused_at_receipt(make_core, decoder, encoder, views, side, size,
                                                                   limits, error, reason):
    """A 69-byte packet declaring 16384x16384 grew the server by 6 GB in 27 s; now it is refused while it is received,
    before it reaches the grouper or a decoder: no state, no memory, and the camera's stream goes on."""

    async def run():
        core, _, registry = make_core(limits=limits)
        await started(core, decoder)
        session, _ = await core.connect(hello(encoder, "C1"))
        rss, start = peak_rss_mb(), time.perf_counter()
        await core.receive(session, packet(forged(encoder, "C1", side, size)))
        (event,) = session.take_events()  # at once: nothing was queued for decoding
        assert time.perf_counter() - start < 2.0 and peak_rss_mb() - rss < 64
        assert isinstance(event, RejectEvent) and type(event.error) is error and event.error.sequence == 1
        assert f"{side}x{side}" in str(event.error) and not core.acks.holds_slot("C1")
        assert sample(registry, "mvic_server_open_groups") == 0
        await core.receive(session, packet(views["C1"][0]))  # the real frame 1 is taken as if nothing happened
        await core.wait_idle()
        assert session.take_events() == [AckEvent(1)]
        await finish(core)
        return registry

    registry = asyncio.run(run())
    assert sample(registry, "mvic_server_packets_rejected_total", camera="C1", reason=reason) == 1


def test_a_view_over_the_pixel_limit_reaches_the_node_as_too_large():
    """The node's existing rule for TOO_LARGE applies (drop the frame, log what to lower); no new protocol code."""
    assert error_code_for(ViewTooLargeError(1, "")) == pb.ERROR_CODE_TOO_LARGE


def test_the_stream_floor_refuses_no_real_view(decoder, views):
    for frames in views.values():
        for _, _, bits in frames:
            decoder.check_stream(unpack(bits))


def _view_set(views: list[tuple[str, int, int]]) -> ViewSet:
    """A view set of (camera, height, width) views, with coded data that does not matter here."""
    received = []
    for camera, h, w in views:
        header = ViewHeader(1, bytes(8), 0, camera, 1, T0, h, w, (-h) % 64, (-w) % 64, 0)
        received.append(ReceivedView(camera, "", 1, T0, 0, 100, ViewBitstream(header, (bytes(8),))))
    return ViewSet("", T0, tuple(received), 0.0, 0.0, True)


def test_a_view_set_is_decoded_in_parts_of_one_size_and_bounded_pixels():
    one = _view_set([("C1", 1080, 1920), ("C2", 1080, 1920)])
    assert decode_units(one, 8 * 1088 * 1920) == [one]  # one part: the view set itself
    mixed = _view_set([("A", 1080, 1920), ("B", 2160, 3840), ("C", 1080, 1920)])
    assert [p.cameras for p in decode_units(mixed, 10**9)] == [("A", "C"), ("B",)]  # sizes are decoded apart anyway
    seven = _view_set([(f"C{i}", 1080, 1920) for i in range(1, 8)])
    parts = decode_units(seven, 3 * 1088 * 1920)  # at most 3 views a part: 7 -> 2 + 2 + 3, in camera order
    assert [p.cameras for p in parts] == [("C1", "C2"), ("C3", "C4"), ("C5", "C6", "C7")]
    assert all(replace(p, views=seven.views) == seven for p in parts)  # anchor, times, completeness kept
    assert [p.cameras for p in decode_units(seven, 1088 * 1920)] == [(c,) for c in seven.cameras]


class GatedDecoder(GroupDecoder):
    """The real decoder, except that a view set holding a view of ``slow`` waits for a token first: an expensive
    decode whose length the test controls."""

    def __init__(self, model, slow: str):
        super().__init__(model)
        self.slow = slow
        self.tokens = threading.Semaphore(0)

    def entropy_decode(self, group):
        if self.slow in group.cameras and not self.tokens.acquire(timeout=60):
            raise RuntimeError("test: the slow decode was never let through")
        return super().entropy_decode(group)


@pytest.mark.parametrize("big_group", ["", "other"])
def test_one_cameras_expensive_views_do_not_hold_back_another_cameras_acks(make_core, weights, encoder, views,
                                                                           big_group):
    """Two expensive packets of one camera raised another camera's ack latency from 0.1 s to 24 s. Here camera BIG
    sends views 4x the size of C1's (in C1's camera group, or in another) and each of its decodes lasts until the
    test lets it end; with one decode worker, C1 gets all three acks while only BIG's first decode has ended. First
    come first served (and a sink that completed view sets in emission order) kept C1 waiting for BIG's every view."""
    big = coded_views(encoder, ["C1", "BIG"], 3, h=128, w=192)["BIG"]  # capture times 3 ms after C1's

    async def run():
        decoder = GatedDecoder(load_model(weights), "BIG")
        core, _, _ = make_core(decode=DecodeConfig(workers=1, max_batch=4, max_inflight_groups=8))
        await started(core, decoder)
        c1, _ = await core.connect(hello(encoder, "C1"))
        bg, _ = await core.connect(hello(encoder, "BIG", big_group))
        try:
            for i in range(3):
                await core.receive(bg, packet(big[i]))
                await core.receive(c1, packet(views["C1"][i]))
            decoder.tokens.release()  # BIG's first decode may end; its next two stay expensive
            acked = [0]
            while acked[-1] < 3:
                acked += acks_of([await next_event(c1, timeout=20)])
            assert core.acks.acked("BIG") <= 1
        finally:
            decoder.tokens.release(10)
        await core.wait_idle()
        assert acks_of(bg.take_events())[-1] == 3
        await finish(core)

    asyncio.run(run())
