"""The stream floor (issue 13, defect 2): no real stream is shorter, the cheapest possible stream is close to it, and a
packet that declares a large image in a few bytes is far below it."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from mvic.shared.codec import latent_codec, registry
from mvic.shared.codec._compressai import BufferedRansEncoder
from mvic.shared.codec.entropy_coding import CdfTable
from mvic.shared.codec.latent_codec import StreamFloor
from mvic.shared.codec.registry import load_model
from tests.conftest import random_image


def _images(rng: np.random.Generator, h: int, w: int) -> dict[str, np.ndarray]:
    """The cheapest images to code (flat ones) and a busy one."""
    return {"black": np.zeros((h, w, 3), np.uint8), "white": np.full((h, w, 3), 255, np.uint8),
            "gray": np.full((h, w, 3), 128, np.uint8), "random": random_image(rng, h, w)}


@pytest.mark.parametrize("h, w", [(64, 64), (100, 190)])
def test_every_coded_view_is_at_least_the_floor(codec_pair, h, w):
    enc, dec = codec_pair
    floor = dec.latent_codec.stream_floor()
    for name, image in _images(np.random.default_rng(h), h, w).items():
        for rate in range(enc.spec.num_rates):
            view = enc.compress_view(image, rate)
            need = dec.min_stream_bytes(view.header.padded_size, floor)
            assert len(view.streams[0]) >= need, (name, rate)
            assert need == dec.min_stream_bytes(view.header.padded_size)  # the same floor, computed again


@pytest.mark.parametrize("name", sorted(registry.registered_weights()))
def test_the_shipped_weights_code_every_view_above_the_floor(name):
    model = load_model(registry.registered_weights()[name])
    floor = model.latent_codec.stream_floor()
    assert floor.bits_per_z > 8  # z alone costs several bits per 64x64 pixels: the floor has teeth
    for image_name, image in _images(np.random.default_rng(0), 128, 192).items():
        for rate in (0, model.spec.num_rates - 1):
            view = model.compress_view(image, rate)
            assert len(view.streams[0]) >= model.min_stream_bytes(view.header.padded_size, floor), (image_name, rate)
    # issue 13's packets: a few dozen bytes that declare 3072^2, 4096^2 or 16384^2 pixels
    assert min(model.min_stream_bytes((s, s), floor) for s in (3072, 4096, 16384)) > 4096  # kilobytes, not dozens


def _cheapest_symbol(cdf: list[int]) -> int:
    """The symbol of a table that costs least: the most probable one, an escape (the last) counting its nibble."""
    bits = [np.log2(65536 / (b - a)) + (4 if s == len(cdf) - 2 else 0) for s, (a, b) in enumerate(pairwise(cdf))]
    return int(np.argmin(bits))


def _cheapest_stream(table: CdfTable, indexes: list[int]) -> bytes:
    """Every symbol the cheapest one of its table: the shortest stream the encoder can write for these indexes."""
    top = [_cheapest_symbol(cdf) for cdf in table.cdfs]  # an escape is coded as the value 0 past the table's end
    enc = BufferedRansEncoder()
    enc.encode_with_indexes([top[i] + table.offsets[i] for i in indexes], indexes, table.cdfs, table.lengths,
                            table.offsets)
    return enc.flush()


@pytest.mark.parametrize("name", ["test-tiny-fast", *sorted(registry.registered_weights())])
def test_the_floor_is_below_and_close_to_the_cheapest_possible_stream(name, tiny_weights):
    """Coding each z channel's and the cheapest y table's most probable symbol everywhere is what a stream costs
    at the least; the floor must not exceed it (it is a lower bound) and should not be far below (it is useful)."""
    model = load_model(tiny_weights[name] if name in tiny_weights else registry.registered_weights()[name])
    codec = model.latent_codec
    z_table, y_table = CdfTable.of(codec.entropy_bottleneck), CdfTable.of(codec.gaussian_conditional)
    h, w = 48, 64  # y latent size: a 768x1024 image
    z_idx = [c for c in range(len(z_table.cdfs)) for _ in range((h // 4) * (w // 4))]
    y_cost = [latent_codec._least_bits(cdf) for cdf in y_table.cdfs]
    y_idx = [int(np.argmin(y_cost))] * (model.spec.m * h * w)
    z_bytes, y_bytes = _cheapest_stream(z_table, z_idx), _cheapest_stream(y_table, y_idx)
    cheapest = len(z_bytes) + len(y_bytes) - 8  # one stream holds both: one 8-byte end state, not two
    floor = StreamFloor.of(z_table, y_table, model.spec.m).min_bytes((h, w))
    assert floor == model.min_stream_bytes((16 * h, 16 * w))
    assert floor <= cheapest <= floor + floor // 50 + 16
