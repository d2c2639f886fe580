"""The fast decoder (issue 16): views shared over threads decode the very same integers; the bf16 synthesis stays
within a few grey levels and a few hundredths of a dB of float32 on real photographs, and never shows in the weights."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from mvic.shared.bitstream import pack, unpack
from mvic.shared.codec import fast_synthesis
from mvic.shared.codec.entropy_coding import DecodeSession
from mvic.shared.codec.fast_synthesis import synthesis_precision
from mvic.shared.codec.fixedpoint import Backend, ExactOptions
from mvic.shared.codec.images import psnr
from mvic.shared.codec.latent_codec import ExactLatents
from mvic.shared.codec.registry import default_weights, load_model
from mvic.shared.codec.transforms import Precision
from mvic.shared.codec.view_fusion import NO_FUSION
from mvic.shared.errors import DesyncError
from mvic.tools.samples import stereo_pair
from tests.conftest import random_image


def _views(model, count: int, seed: int, h: int = 72, w: int = 104):
    rng = np.random.default_rng(seed)
    return [unpack(pack(model.compress_view(random_image(rng, h, w), i % model.spec.num_rates, camera_id=f"C{i + 1}")))
            for i in range(count)]


def _damaged(view):
    stream = bytearray(view.streams[0])
    for i in range(4, len(stream), 5):
        stream[i] ^= 0x5A
    return replace(view, streams=(bytes(stream),))


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_views_shared_over_threads_decode_the_same_integers(codec_pair, threads):
    enc, dec = codec_pair
    views = _views(enc, 5, seed=21)
    ref = dec._decode_latents(views, ExactOptions(), 1)
    got = dec._decode_latents(views, ExactOptions(Backend.TAPS), threads)
    for f in fields(ExactLatents):
        assert torch.equal(getattr(got, f.name), getattr(ref, f.name)), f.name


@pytest.mark.parametrize("threads", [1, 2])
def test_a_damaged_view_is_named_whichever_thread_decoded_it(codec_pair, threads):
    enc, dec = codec_pair
    views = _views(enc, 4, seed=22)
    views[3] = _damaged(views[3])
    with pytest.raises(DesyncError) as err:
        dec.entropy_decode(views, threads=threads)
    assert err.value.failed == [3]
    with pytest.raises(DesyncError) as err:
        dec.entropy_decode([_damaged(v) for v in views[:3]], threads=threads)
    assert err.value.failed == [0, 1, 2]


def test_cpu_entropy_decoding_leaves_onednn_on_for_the_synthesis_beside_it(codec_pair, monkeypatch):
    """exact_mode's oneDNN switch is process-wide; float64 never goes to oneDNN, so CPU decoding does without it."""
    enc, dec = codec_pair
    seen = []
    code = DecodeSession.code

    def spy(self, *args):
        seen.append(torch.backends.mkldnn.enabled)
        return code(self, *args)

    monkeypatch.setattr(DecodeSession, "code", spy)
    views = _views(enc, 2, seed=23)
    assert torch.backends.mkldnn.enabled
    dec.entropy_decode(views)  # raises DesyncError unless the symbols are the encoder's
    assert seen and all(seen)


def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    assert synthesis_precision("fp32", "cpu") is Precision.FP32
    assert synthesis_precision("bf16", "cuda:0") is Precision.BF16
    assert synthesis_precision("auto", "cuda:0") is Precision.FP32
    monkeypatch.setattr(fast_synthesis, "native_bf16", lambda: True)
    assert synthesis_precision("auto", "cpu") is Precision.BF16
    monkeypatch.setattr(fast_synthesis, "native_bf16", lambda: False)
    assert synthesis_precision(Precision.AUTO, "cpu") is Precision.FP32


def test_bf16_copy_is_made_once_per_weights_and_never_joins_the_state_dict(codec_pair):
    enc, dec = codec_pair
    keys = set(dec.state_dict())
    views = _views(enc, 2, seed=24)
    dec.decompress(views, precision="bf16")
    copies = fast_synthesis.bf16_synthesis((dec.jct_1, dec.synthesis_1, dec.jct_2, dec.synthesis_2))
    assert set(dec.state_dict()) == keys
    assert all(p.dtype == torch.bfloat16 for c in copies for p in c.parameters())
    assert fast_synthesis.bf16_synthesis((dec.jct_1, dec.synthesis_1, dec.jct_2, dec.synthesis_2)) is copies
    with torch.no_grad():
        dec.synthesis_2[-1].bias.add_(0.0)  # any in-place change of a weight makes a new copy
    assert fast_synthesis.bf16_synthesis((dec.jct_1, dec.synthesis_1, dec.jct_2, dec.synthesis_2)) is not copies


def test_bf16_synthesis_of_real_photographs_is_within_a_few_grey_levels_of_float32():
    """Shipped weights, a real stereo pair, every rate: measured on the held-out photos at 1080p-class sizes, the
    mean PSNR moves by -0.007 dB (worst -0.054 dB), at most 3 grey levels (benchmarks/results-fast-decode-cpu.md).
    The view fusion after synthesis follows optical flow, which a grey level can move, so with it only the quality
    is compared."""
    model = load_model(default_weights("ldmic-fast-lite"))
    images = [image for _, image in stereo_pair(scale=0.25)]
    for q in range(model.spec.num_rates):
        views = [model.compress_view(im, q, camera_id=f"C{i + 1}") for i, im in enumerate(images)]
        fp32, bf16 = (model.decompress(views, precision=p, fusion=NO_FUSION) for p in ("fp32", "bf16"))
        for im, a, b in zip(images, fp32, bf16):
            assert np.abs(a.image.astype(np.int16) - b.image.astype(np.int16)).max() <= 4
            assert psnr(b.image, im) > psnr(a.image, im) - 0.15
        fp32, bf16 = (model.decompress(views, precision=p) for p in ("fp32", "bf16"))
        assert np.mean([psnr(b.image, im) - psnr(a.image, im) for im, a, b in zip(images, fp32, bf16)]) > -0.15


def test_decoding_takes_the_fast_exact_backend_for_torchs_thread_count():
    from mvic.shared.codec.model import decode_options

    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert decode_options().backend is Backend.TAPS
        torch.set_num_threads(2)
        assert decode_options().backend is Backend.NATIVE
    finally:
        torch.set_num_threads(prev)
