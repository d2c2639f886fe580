"""Hostile packets through ``unpack`` and ``decompress`` in process: each is decoded or refused with a named MVIC
error, quickly, whatever its bytes (bounded and seeded; ``benchmarks/fuzz.py`` runs the long campaign)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from mvic.shared.bitstream import unpack
from mvic.shared.codec.registry import load_model
from mvic.shared.errors import MVICError
from tests.conftest import random_image
from tests.strategies import hostile_packets

MAX_PIXELS = 256 * 256  # the bound a server would configure; decode cost is checked against it below


@pytest.fixture(scope="module", params=["test-tiny-fast", "test-tiny-ar"])
def model_and_views(request, tiny_weights):
    model = load_model(tiny_weights[request.param])
    rng = np.random.default_rng(5)
    views = [model.compress_view(random_image(rng, h, w), q, camera_id="C1", sequence=s)
             for s, (h, w, q) in enumerate([(64, 64, 0), (48, 80, 2), (70, 33, 1)])]
    return model, views


def test_hostile_packets_are_decoded_or_refused_by_name(model_and_views):
    model, views = model_and_views
    slowest = 0.0
    outcomes: dict[str, int] = {}

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                     HealthCheck.data_too_large])
    @given(packet=hostile_packets(views, max_pixels=MAX_PIXELS, max_stream=1 << 14))
    def run(packet):
        nonlocal slowest
        start = time.perf_counter()
        try:
            view = unpack(packet)
            h = view.header
            if h.padded_size[0] * h.padded_size[1] > MAX_PIXELS * 2:  # what a server refuses before decoding
                outcome = "too large"
            else:
                images = model.decompress([view])
                assert images[0].image.shape == (h.height, h.width, 3)
                outcome = "decoded"
        except MVICError as exc:  # anything else (or a crash) fails the test
            outcome = type(exc).__name__
        slowest = max(slowest, time.perf_counter() - start)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    run()
    assert sum(outcomes.values()) >= 150
    assert {"CorruptBitstreamError", "TruncatedBitstreamError", "DesyncError", "decoded"} <= set(outcomes), outcomes
    assert slowest < 60, f"one packet took {slowest:.1f} s"
