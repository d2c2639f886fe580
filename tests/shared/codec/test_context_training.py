"""The autoregressive context's training paths: the noisy latent (LDMIC's recipe) and the optional second pass."""

from __future__ import annotations

import torch

from mvic.shared.codec.context import AutoregressiveContext


def test_the_second_pass_sees_the_latent_rounded_around_the_first_pass_means():
    torch.manual_seed(0)
    ctx = AutoregressiveContext(8)
    y = torch.randn(2, 8, 6, 6) * 3
    params = torch.randn(2, 16, 6, 6)
    torch.manual_seed(1)
    scales_1, means_1 = ctx.train_params(y, params)
    ctx.two_pass = True
    torch.manual_seed(1)  # the same noise: the first pass is the single-pass result
    scales_2, means_2 = ctx.train_params(y, params)
    expected = ctx._ep(params, ctx.context_prediction(torch.round(y - means_1) + means_1))
    assert torch.allclose(scales_2, expected[0]) and torch.allclose(means_2, expected[1])
    assert not torch.allclose(means_2, means_1)
    # the gradient reaches the context through the second pass only (the rounded input is detached)
    y.requires_grad_(True)
    torch.manual_seed(1)
    _, means = ctx.train_params(y, params)
    means.sum().backward()
    assert y.grad is None or torch.count_nonzero(y.grad) == 0
    assert ctx.context_prediction.weight.grad is not None
