"""The decoder's two stages: entropy_decode (exact, any model instance or device) -> synthesize (batched groups)."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from mvic.shared.bitstream import pack, unpack
from mvic.shared.codec.fixedpoint import exact_mode
from mvic.shared.codec.registry import load_model
from mvic.shared.errors import DesyncError, GroupError, ModelMismatchError
from tests.conftest import random_image


def _group(model, seed: int, sizes: list[tuple[int, int]], rate: int = 2):
    rng = np.random.default_rng(seed)
    return [unpack(pack(model.compress_view(random_image(rng, h, w), rate, camera_id=f"C{i + 1}", sequence=seed)))
            for i, (h, w) in enumerate(sizes)]


def _damaged(view):
    stream = bytearray(view.streams[0])
    for i in range(4, len(stream), 7):
        stream[i] ^= 0x5A
    return replace(view, streams=(bytes(stream),))


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_batched_synthesis_equals_decompress_group_by_group(codec_pair):
    enc, dec = codec_pair
    g1, g2 = _group(enc, 1, [(64, 96)] * 3), _group(enc, 2, [(64, 96)] * 3, rate=4)
    batched = dec.synthesize([dec.entropy_decode(g1), dec.entropy_decode(g2)])
    for group, got in zip((g1, g2), batched):
        expected = dec.decompress(group)
        assert [d.header for d in got] == [v.header for v in group]
        for g, e in zip(got, expected):
            assert g.image.shape == e.image.shape == (64, 96, 3)
            # Batching may change the float summation order of the CPU convolutions: at most one level, rarely (with
            # the tiny models on CPU, two groups give identical pixels; four, a single pixel one level off at times).
            assert _max_diff(g.image, e.image) <= 1 and np.count_nonzero(g.image != e.image) <= g.image.size // 100


def test_groups_of_other_shapes_are_synthesized_apart_in_order(tiny_weights):
    dec = load_model(tiny_weights["test-tiny-fast"])
    groups = [_group(dec, 3, [(64, 64)] * 3), _group(dec, 4, [(64, 64)] * 2), _group(dec, 5, [(100, 150)] * 3),
              _group(dec, 6, [(64, 64)] * 3)]
    out = dec.synthesize([dec.entropy_decode(g) for g in groups])
    for group, got in zip(groups, out):
        expected = dec.decompress(group)
        assert [d.header for d in got] == [v.header for v in group]
        assert all(_max_diff(g.image, e.image) <= 1 for g, e in zip(got, expected))


def test_entropy_decoding_on_another_instance_gives_identical_latents(tiny_weights, model_name):
    """The server's CPU workers decode with a second load of the weights; the device model synthesizes."""
    synth, worker = load_model(tiny_weights[model_name]), load_model(tiny_weights[model_name])
    group = _group(synth, 7, [(64, 128)] * 3)
    mine, theirs = synth.entropy_decode(group), worker.entropy_decode(group)
    assert (theirs.headers, theirs.rate_indexes, theirs.padded_size) == (mine.headers, mine.rate_indexes, (64, 128))
    for f in fields(mine.latents):
        assert torch.equal(getattr(theirs.latents, f.name), getattr(mine.latents, f.name)), f.name
    assert torch.equal(theirs.latents.y_hat_fx, synth.decode_latents(group))
    (got,) = synth.synthesize([theirs])
    assert all(np.array_equal(g.image, e.image) for g, e in zip(got, synth.decompress(group)))


def test_a_view_selected_from_a_group_synthesizes_like_decoding_it_alone(tiny_weights):
    dec = load_model(tiny_weights["test-tiny-fast"])
    group = _group(dec, 8, [(64, 64)] * 3)
    (alone,) = dec.synthesize([dec.entropy_decode(group).select([1])])
    assert np.array_equal(alone[0].image, dec.decompress(group[1:2])[0].image)


def test_entropy_decode_errors(tiny_weights):
    dec = load_model(tiny_weights["test-tiny-fast"])
    other = load_model(tiny_weights["test-tiny-ar"])
    group = _group(dec, 9, [(64, 64)] * 3)
    with pytest.raises(GroupError, match="one padded size"):
        dec.entropy_decode(group[:2] + _group(dec, 9, [(128, 64)]))
    with pytest.raises(GroupError):
        dec.entropy_decode([])
    with pytest.raises(ModelMismatchError, match="test-tiny-ar"):
        dec.entropy_decode(group[:1] + _group(other, 9, [(64, 64)]))
    with pytest.raises(DesyncError) as err:
        dec.entropy_decode([group[0], _damaged(group[1]), group[2]])
    assert err.value.failed == [1]


def test_decompress_reports_desync_positions_in_the_list_given(tiny_weights):
    dec = load_model(tiny_weights["test-tiny-fast"])
    small, big = _group(dec, 10, [(64, 64)] * 2), _group(dec, 11, [(128, 64)] * 2)
    with pytest.raises(DesyncError) as err:
        dec.decompress([small[0], big[0], small[1], _damaged(big[1])])
    assert err.value.failed == [3]


def test_interleaved_exact_sections_restore_the_backends_and_leave_cudnn_alone_on_cpu():
    """Entropy workers enter and leave exact mode out of order; a CPU section never turns cuDNN off (GPU synthesis)."""
    before = torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled
    first, second = exact_mode("cpu"), exact_mode("cpu")
    first.__enter__()
    second.__enter__()
    assert not torch.backends.mkldnn.enabled and torch.backends.cudnn.enabled == before[1]
    first.__exit__(None, None, None)
    assert not torch.backends.mkldnn.enabled  # the other worker is still inside
    second.__exit__(None, None, None)
    assert (torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled) == before
