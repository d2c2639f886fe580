"""The latent codec on its own: a round trip of y through rANS, and the weights files' keys it must not change."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from mvic.shared.codec import registry
from mvic.shared.codec.entropy_coding import DecodeSession, EncodeSession
from mvic.shared.codec.fixedpoint import ExactOptions, from_fixed
from mvic.shared.codec.gains import RateGains
from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import load_model
from mvic.shared.model_table import spec_by_name

#: The top-level state_dict keys of every weights file ever written: renaming a module breaks them all.
WEIGHTS_FILE_MODULES = {"g_a", "h_a", "h_s", "entropy_bottleneck", "gaussian_conditional", "context", "gains",
                        "jct_1", "synthesis_1", "jct_2", "synthesis_2"}


def test_the_latent_codec_owns_nothing_and_the_keys_stay():
    model = LDMIC(spec_by_name("test-tiny-ar"))
    assert {k.split(".")[0] for k in model.state_dict()} == WEIGHTS_FILE_MODULES
    codec = model.latent_codec
    assert codec.h_s is model.h_s and codec.context is model.context and codec.gains is model.gains
    assert codec.entropy_bottleneck is model.entropy_bottleneck
    assert {n for n, _ in model.named_parameters()} <= set(model.state_dict())  # training's EMA relies on it


@pytest.mark.parametrize("name", sorted(registry.registered_weights()))
def test_shipped_weights_load_strictly_with_the_same_keys(name):
    record = registry.registered_weights()[name]
    with safe_open(str(record.path), framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(LDMIC(spec_by_name(record.model)).state_dict())
    model = load_model(record)  # sha256 verified, strict=True
    assert model.identity.weights_hash == bytes.fromhex(record.sha256)[:8]


def test_y_round_trips_through_the_latent_codec(tiny_weights, model_name):
    model = load_model(tiny_weights[model_name])
    codec = model.latent_codec
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 128).expand(2, 3, 64, 128)  # one image at two rate points
    rate = torch.tensor([1, 4])
    with torch.no_grad():
        y = model.g_a(x) * RateGains.pick(model.gains.y_gain, rate)  # (2, M, 4, 8)
        enc = EncodeSession(2)
        sent = codec.encode(y, rate, enc, ExactOptions())
        streams = enc.finish()
        dec = DecodeSession(streams)
        got = codec.decode(rate, dec, (4, 8), ExactOptions())
        est = codec.forward(y, rate, training=False)
    for a, b in ((sent.y_hat_fx, got.y_hat_fx), (sent.scales, got.scales), (sent.means, got.means),
                 (sent.z_hat, got.z_hat)):
        assert torch.equal(a, b)
    assert all(dec.intact(i) and dec.symbol_crc(i) == enc.symbol_crc(i) for i in range(2))
    assert torch.equal(est.y_hat, from_fixed(got.y_hat_fx).float())  # eval forward = what the decoder gets
    assert (y - est.y_hat).abs().max() <= 0.5 + 1e-5  # y rounded around its predicted mean
    assert len(streams[0]) < len(streams[1])  # rate 4 costs more than rate 1 on the same content
    assert ((est.likelihoods_y > 0) & (est.likelihoods_y <= 1)).all()


def test_training_forward_rounds_straight_through_and_counts_rate(tiny_weights):
    model = load_model(tiny_weights["test-tiny-fast"]).train()
    y = (torch.randn(3, model.spec.m, 4, 4) * 4).requires_grad_()
    out = model.latent_codec.forward(y, torch.tensor([0, 2, 4]), training=True)
    out.y_hat.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))  # straight-through: d y_hat / d y = 1
    assert 0 < (out.y_hat - y).detach().abs().max() <= 0.5 + 1e-5  # rounded around the means, not noisy
    assert out.likelihoods_z.shape == (3, model.spec.n, 1, 1) and bool((out.likelihoods_y <= 1).all())
