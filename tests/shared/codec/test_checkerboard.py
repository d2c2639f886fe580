"""The checkerboard context's two coding paths: strided lattices with a half-cost context convolution (even latent
sizes) and boolean masks (any size) give the same symbols, streams and decoded latents."""

from __future__ import annotations

import pytest
import torch

from mvic.shared.codec.context import Checkerboard, CheckerboardContext
from mvic.shared.codec.entropy_coding import EncodeSession
from mvic.shared.codec.fixedpoint import ExactOptions, exact_form, exact_mode, to_fixed
from tests.conftest import make_tiny_model


def test_a_lattice_holds_the_masks_sites_in_the_masks_order():
    h, w = 6, 8
    x = torch.arange(2 * 3 * h * w, dtype=torch.float64).view(2, 3, h, w)
    grid, anchor = Checkerboard(h, w), CheckerboardContext.anchor_mask(h, w, "cpu")
    for anchors, sites in ((True, anchor), (False, ~anchor)):
        taken = grid.take(x, anchors).reshape(2, 3, -1)
        assert torch.equal(taken, x[:, :, sites])
        back = torch.zeros_like(x)
        grid.put(back, taken, anchors)
        assert torch.equal(back, torch.where(sites, x, 0.0))


def test_the_context_convolution_at_the_non_anchors_is_the_whole_ones_there():
    model = make_tiny_model("test-tiny-fast", seed=3)
    conv = model.context.context_prediction
    m, h, w = conv.in_channels, 10, 12
    grid, anchor = Checkerboard(h, w), CheckerboardContext.anchor_mask(h, w, "cpu")
    with torch.no_grad(), exact_mode():
        x_fx = to_fixed(torch.randn(2, m, h, w, dtype=torch.float64) * 3) * anchor  # anchors only, as when coding
        whole = exact_form(conv)(x_fx, ExactOptions())
        assert torch.equal(grid.conv_rows(exact_form(conv), x_fx), grid.rows(whole, anchors=False))


@pytest.mark.parametrize("b,h,w", [(1, 6, 10), (3, 18, 4)])
def test_both_paths_code_the_same_streams(b, h, w):
    model = make_tiny_model("test-tiny-fast", seed=1)
    model.update(force=True)
    ctx, codec = model.context, model.latent_codec
    m = ctx.m
    torch.manual_seed(b * h)
    with torch.no_grad(), exact_mode():
        params_fx = to_fixed(torch.randn(b, 2 * m, h, w, dtype=torch.float64) * 2)
        y = torch.randn(b, m, h, w, dtype=torch.float64) * 6
        tables, lattice, masked = codec._gaussian_tables(), EncodeSession(b), EncodeSession(b)
        runs = [ctx._code_lattice(params_fx, y, lattice, tables),
                ctx._code_masked(params_fx, y, masked, tables, ExactOptions())]
        assert lattice.finish() == masked.finish()
    assert all(torch.equal(getattr(runs[0], f), getattr(runs[1], f)) for f in ("y_hat_fx", "scales", "means"))


def test_an_odd_latent_size_takes_the_masked_path():
    with pytest.raises(ValueError, match="even latent size"):
        Checkerboard(5, 8)
