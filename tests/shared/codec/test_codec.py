"""Codec behaviour with tiny random models: exact latents, eval forward == bitstream, K = 1..7, any size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvic.shared.bitstream import pack, unpack
from mvic.shared.codec.entropy_coding import CodingSession
from mvic.shared.codec.fixedpoint import ExactOptions, exact_mode
from mvic.shared.codec.gains import RateGains
from mvic.shared.codec.registry import load_model
from mvic.shared.codec.view_fusion import NO_FUSION
from tests.conftest import random_image


def test_decoded_latents_equal_the_encoders(codec_pair):
    enc, dec = codec_pair
    rng = np.random.default_rng(0)
    for rate in range(enc.spec.num_rates):
        image = random_image(rng, 64, 128)
        view = unpack(pack(enc.compress_view(image, rate)))
        assert torch.equal(dec.decode_latents([view]), enc.decode_latents([view]))
        # the encoder's own latent, from the estimation path that shares its code
        x = torch.from_numpy(image).permute(2, 0, 1).float().div(255).view(1, 1, 3, 64, 128)
        r = torch.tensor([rate])
        with torch.no_grad(), exact_mode():
            y = enc.g_a(x[0]) * RateGains.pick(enc.gains.y_gain, r)
            z = enc.h_a(y) * RateGains.pick(enc.gains.z_gain, r)
            lat = enc.latent_codec.code(y, z, r, CodingSession(1), ExactOptions())
        assert torch.equal(dec.decode_latents([view])[0], lat.y_hat_fx[0])
        assert len(set(dec.decode_latents([view]).flatten().tolist())) > 20  # real, varied symbols


def test_reconstruction_equals_eval_forward(codec_pair):
    enc, dec = codec_pair
    rng = np.random.default_rng(1)
    images = [random_image(rng, 128, 64) for _ in range(3)]
    rates = [0, 2, 4]
    views = [enc.compress_view(im, q, camera_id=f"C{i}") for i, (im, q) in enumerate(zip(images, rates))]
    decoded = dec.decompress(views, fusion=NO_FUSION)  # the network's output; the view fusion comes after it
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).unsqueeze(0)
    with torch.no_grad():
        out = dec(x, torch.tensor([rates]))
    expected = out.x_hat[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, d in enumerate(decoded):
        assert np.array_equal(d.image, expected[i])
    # the eval forward's rate estimate is close to the real coded size
    est_bits = float(-(out.likelihoods_y.log2().sum() + out.likelihoods_z.log2().sum()))
    real_bits = 8 * sum(len(pack(enc.compress_view(im, q))) for im, q in zip(images, rates))
    assert 0.8 * est_bits < real_bits < 1.25 * est_bits + 8 * 3 * 80


@pytest.mark.parametrize("k", range(1, 8))
def test_any_number_of_views(tiny_weights, k):
    enc = load_model(tiny_weights["test-tiny-fast"])
    rng = np.random.default_rng(k)
    images = [random_image(rng, 64, 64) for _ in range(k)]
    views = [enc.compress_view(im, 2, camera_id=f"C{i + 1}", sequence=7) for i, im in enumerate(images)]
    decoded = enc.decompress(views)
    assert [d.header.camera_id for d in decoded] == [f"C{i + 1}" for i in range(k)]
    assert all(d.image.shape == (64, 64, 3) and d.image.dtype == np.uint8 for d in decoded)


def test_joint_decoding_uses_the_other_views(tiny_weights):
    dec = load_model(tiny_weights["test-tiny-fast"])
    rng = np.random.default_rng(5)
    views = [dec.compress_view(random_image(rng, 64, 64), 2) for _ in range(3)]
    alone = dec.decompress(views[:1])[0].image
    together = dec.decompress(views)[0].image
    assert not np.array_equal(alone, together)  # the JCT mixes in the neighbours


@pytest.mark.parametrize("h,w", [(64, 64), (65, 97), (33, 50), (1, 1), (130, 200)])
def test_any_image_size_round_trips(codec_pair, h, w):
    enc, dec = codec_pair
    image = random_image(np.random.default_rng(h * w), h, w)
    view = unpack(pack(enc.compress_view(image, 3)))
    assert (view.header.height, view.header.width) == (h, w)
    out = dec.decompress([view])[0].image
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


def test_mixed_sizes_decode_in_subgroups(tiny_weights):
    dec = load_model(tiny_weights["test-tiny-fast"])
    rng = np.random.default_rng(9)
    views = [dec.compress_view(random_image(rng, h, w), 1) for h, w in [(64, 64), (100, 150), (64, 64)]]
    out = dec.decompress(views)
    assert [o.image.shape[:2] for o in out] == [(64, 64), (100, 150), (64, 64)]
    pair = dec.decompress([views[0], views[2]])
    assert np.array_equal(pair[0].image, out[0].image)


def test_higher_rate_point_spends_more_bits(codec_pair):
    enc, _ = codec_pair
    image = random_image(np.random.default_rng(3), 64, 128)
    sizes = [enc.compress_view(image, q).payload_bytes for q in range(enc.spec.num_rates)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]


def test_training_forward_is_differentiable(tiny_weights, model_name):
    model = load_model(tiny_weights[model_name]).train()
    x = torch.rand(2, 3, 3, 64, 64)
    out = model(x, torch.tensor([0, 4]))
    loss = out.likelihoods_y.log2().sum().neg() + ((out.x_hat - x) ** 2).mean()
    loss.backward()
    assert out.x_hat.shape == x.shape
    assert model.g_a[0].weight.grad is not None and model.context.entropy_parameters[0].weight.grad is not None
