"""Integer networks give the same integers whatever the evaluation path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mvic.shared.codec import fixedpoint as fp
from mvic.shared.errors import ExactnessError


def _random_fixed(shape, generator):
    return torch.randint(-(2**20), 2**20, shape, generator=generator).double()


@pytest.mark.parametrize("transposed,k,stride,pad", [(False, 5, 2, 2), (False, 3, 1, 1), (False, 1, 1, 0),
                                                     (True, 5, 2, 2)])
def test_backends_agree_exactly(transposed, k, stride, pad):
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    if transposed:
        module = nn.ConvTranspose2d(24, 32, k, stride, pad, output_padding=stride - 1)
    else:
        module = nn.Conv2d(24, 32, k, stride, pad)
    q = fp.quantize_conv(module)
    x = _random_fixed((3, 24, 9, 13), g)
    ref = q(x)
    for opts in (fp.ExactOptions(fp.Backend.IM2COL), fp.ExactOptions(channels_last=True),
                 fp.ExactOptions(fp.Backend.IM2COL, channels_last=True)):
        assert torch.equal(q(x, opts), ref)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = q(x)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(single, ref)
    assert torch.equal(ref, torch.round(ref)) and ref.abs().max() <= fp.ACT_LIMIT


def test_integer_conv_tracks_the_float_conv():
    torch.manual_seed(0)
    module = nn.Conv2d(16, 16, 3, 1, 1)
    x = torch.randn(2, 16, 8, 8) * 10
    exact = fp.from_fixed(fp.quantize_conv(module)(fp.to_fixed(x)))
    assert (exact - module(x).double()).abs().max() < 4 * 2.0**-fp.FRAC_BITS


def test_rows_equal_the_1x1_convolution():
    torch.manual_seed(0)
    module = nn.Conv2d(12, 20, 1)
    q = fp.quantize_conv(module)
    x = _random_fixed((2, 12, 3, 4), torch.Generator().manual_seed(3))
    full = q(x)
    rows = q.rows(x.permute(0, 2, 3, 1).reshape(-1, 12))
    assert torch.equal(rows, full.permute(0, 2, 3, 1).reshape(-1, 20))


def test_leaky_relu_matches_float_slope():
    x = torch.linspace(-1000, 1000, 2001, dtype=torch.float64)
    y = fp.from_fixed(fp.leaky_relu_fixed(fp.to_fixed(x)))
    ref = torch.nn.functional.leaky_relu(x, fp.LEAKY_SLOPE)
    assert (y - ref).abs().max() <= 2.0**-fp.FRAC_BITS


def test_overflow_is_refused():
    module = nn.Conv2d(8, 8, 3)
    with torch.no_grad():
        module.bias.fill_(1e12)
    with pytest.raises(ExactnessError, match="2\\*\\*53"):
        fp.quantize_conv(module)
    with pytest.raises(ExactnessError):
        fp.quantize_sequential(nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU()))


def test_integer_form_is_computed_once_on_the_cpu_and_refreshed_when_weights_change():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(4, 6, 1), nn.LeakyReLU(fp.LEAKY_SLOPE), nn.Conv2d(6, 2, 1))
    first = fp.exact_form(seq)
    assert fp.exact_form(seq) is first  # cached: no re-quantization per call
    fresh = fp.quantize_sequential(seq)
    assert all(torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and torch.equal(a.inv_scale, b.inv_scale)
               for a, b in zip(first[::2], fresh[::2]))
    with torch.no_grad():
        seq[0].weight.mul_(2.0)  # an optimizer step, say
    second = fp.exact_form(seq)
    assert second is not first and torch.equal(second[0].weight, fp.quantize_sequential(seq)[0].weight)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    assert fp.exact_form(conv) is fp.exact_form(conv) and isinstance(fp.exact_form(conv), fp.IntConv)
    seq.double()  # new tensors (as a move to another device makes): new form
    assert fp.exact_form(seq) is not second
