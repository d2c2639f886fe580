"""The camera's fast encode path: faster arithmetic where it may differ, the very same integers where it may not.

g_a and h_a (``transforms.encoder_form``) may run in bf16 or channels-last: only the latents move, a little. The
exact networks may be evaluated by ``Backend.TAPS``: it must give the integers of the reference backend. And
whatever the encoder ran, a decoder on any path decodes the same symbols (the CRC in the header checks them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mvic.shared.bitstream import pack, unpack
from mvic.shared.codec import fixedpoint as fp
from mvic.shared.codec._compressai import CheckerboardMaskedConv2d, MaskedConv2d
from mvic.shared.codec.entropy_coding import CdfTable, EncodeSession
from mvic.shared.codec.registry import load_model
from mvic.shared.codec.transforms import Precision, encoder_form, native_bf16, resolve_precision
from tests.conftest import make_tiny_model, random_image

MODULES = {
    "conv5 s2": lambda: nn.Conv2d(24, 32, 5, 2, 2),
    "conv3 s1": lambda: nn.Conv2d(24, 32, 3, 1, 1),
    "conv1": lambda: nn.Conv2d(24, 32, 1),
    "deconv5 s2": lambda: nn.ConvTranspose2d(24, 32, 5, 2, 2, output_padding=1),
    "deconv3 s2": lambda: nn.ConvTranspose2d(24, 32, 3, 2, 1, output_padding=1),
    "checkerboard": lambda: CheckerboardMaskedConv2d(24, 32, kernel_size=5, padding=2),
    "mask A": lambda: MaskedConv2d(24, 32, kernel_size=5, padding=2, mask_type="A"),
}


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("shape", [(3, 24, 9, 13), (1, 24, 1, 1), (2, 24, 40, 3)])
def test_taps_backend_gives_the_reference_integers(name, shape):
    torch.manual_seed(3)
    q = fp.quantize_conv(MODULES[name]())
    x = torch.randint(-(2**22), 2**22, shape, generator=torch.Generator().manual_seed(4)).double()
    with fp.exact_mode("cpu"):
        ref = q(x)
        got = q(x, fp.ExactOptions(fp.Backend.TAPS))
    assert got.shape == ref.shape and torch.equal(got, ref)


def test_taps_skips_the_taps_a_mask_zeroes_and_splits_transposed_convolutions_into_phases():
    checkerboard = fp.quantize_conv(MODULES["checkerboard"]())
    assert [len(p.taps) for p in checkerboard.phases] == [12]
    deconv = fp.quantize_conv(MODULES["deconv5 s2"]())
    assert sorted(len(p.taps) for p in deconv.phases) == [4, 6, 6, 9]  # 25 taps, each used once


def test_rows_and_leaky_relu_in_place_match_the_plain_definitions():
    torch.manual_seed(5)
    layers = fp.quantize_sequential(nn.Sequential(nn.Conv2d(16, 24, 1), nn.LeakyReLU(fp.LEAKY_SLOPE),
                                                  nn.Conv2d(24, 8, 1)))
    rows = torch.randint(-(2**22), 2**22, (500, 16), generator=torch.Generator().manual_seed(6)).double()
    plain = rows
    for layer in layers:  # the definitions: matmul + bias, round_shift, clamp; torch.where LeakyReLU
        if isinstance(layer, str):
            plain = fp.leaky_relu_fixed(plain)
        else:
            acc = plain @ layer.weight.reshape(layer.weight.shape[0], -1).t() + layer.bias
            plain = fp.round_shift(acc, layer.inv_scale).clamp(-fp.ACT_LIMIT, fp.ACT_LIMIT)
    before = rows.clone()
    assert torch.equal(fp.run_rows(layers, rows), plain)
    assert torch.equal(rows, before), "the caller's rows must not be modified"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_encoder_forms_track_the_float_modules(precision):
    model = make_tiny_model("test-tiny-fast").eval()
    x = torch.from_numpy(random_image(np.random.default_rng(1), 64, 96)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = model.g_a(x)
        z = model.h_a(y)
        y_fast = encoder_form(model.g_a, precision)(x)
        z_fast = encoder_form(model.h_a, precision)(y)
    tol = 1e-5 if precision == "fp32" else 3e-2
    for ref, fast in ((y, y_fast), (z, z_fast)):
        assert fast.dtype == torch.float32 and fast.shape == ref.shape
        assert float((fast - ref).abs().mean() / ref.abs().mean()) < tol


def test_encoder_form_is_made_once_and_remade_when_weights_change():
    model = make_tiny_model("test-tiny-fast")
    form = encoder_form(model.g_a, "fp32")
    assert encoder_form(model.g_a, "fp32") is form
    assert encoder_form(model.g_a, "bf16") is not form
    with torch.no_grad():
        model.g_a[0].weight.mul_(2)
    assert encoder_form(model.g_a, "fp32") is not form


def test_auto_precision_follows_the_cpu():
    assert resolve_precision("auto") is (Precision.BF16 if native_bf16() else Precision.FP32)
    assert resolve_precision("fp32") is Precision.FP32 and resolve_precision(Precision.BF16) is Precision.BF16
    with pytest.raises(ValueError):
        resolve_precision("fp16")


ENCODE_PATHS = [(p, b) for p in ("fp32", "bf16", "auto") for b in (fp.Backend.NATIVE, fp.Backend.TAPS)]
DECODE_PATHS = [fp.ExactOptions(), fp.ExactOptions(fp.Backend.TAPS), fp.ExactOptions(fp.Backend.IM2COL),
                fp.ExactOptions(channels_last=True)]


@pytest.mark.parametrize("name", ["test-tiny-fast", "test-tiny-ar"])
def test_every_encode_path_decodes_identically_on_every_decode_path(tiny_weights, name):
    enc, dec = load_model(tiny_weights[name]), load_model(tiny_weights[name])
    rng = np.random.default_rng(21)
    images = [random_image(rng, int(rng.integers(40, 100)), int(rng.integers(40, 100)))
              for _ in range(3 if name.endswith("ar") else 6)]
    for precision, backend in ENCODE_PATHS:
        views = [unpack(pack(enc.compress_view(im, i % enc.spec.num_rates, sequence=i, precision=precision,
                                               opts=fp.ExactOptions(backend))))
                 for i, im in enumerate(images)]
        for view in views:
            reference = dec.decode_latents([view])  # raises DesyncError if the symbols differ (CRC)
            for opts in DECODE_PATHS[1:]:
                assert torch.equal(dec.decode_latents([view], opts), reference), (precision, backend, opts)


def test_exact_backends_give_the_encoder_the_same_bytes(tiny_weights):
    """The encoder's exact part is evaluated by TAPS; given the same latents, the stream is byte-identical."""
    model = load_model(tiny_weights["test-tiny-fast"])
    image = random_image(np.random.default_rng(22), 80, 112)
    native, taps = (model.compress_view(image, 3, precision="fp32", opts=fp.ExactOptions(b))
                    for b in (fp.Backend.NATIVE, fp.Backend.TAPS))
    assert native == taps


def test_large_blocks_code_the_same_bytes_with_the_whole_table(tiny_weights):
    """EncodeSession skips finding the used CDF rows for large blocks; the stream must not change."""
    model = load_model(tiny_weights["test-tiny-fast"])
    table = CdfTable.of(model.gaussian_conditional)
    rng = np.random.default_rng(23)
    indexes = torch.from_numpy(rng.integers(0, len(table.cdfs), (1, 3 * table.entries)))
    symbols = torch.from_numpy(rng.integers(-4, 5, indexes.shape)).double()
    big = EncodeSession(1)
    big.code(symbols, torch.zeros_like(symbols), indexes, table)
    small = EncodeSession(1)
    for part in range(0, indexes.shape[1], 50):  # blocks smaller than the table: the subset path
        sl = slice(part, part + 50)
        small.code(symbols[:, sl], torch.zeros_like(symbols[:, sl]), indexes[:, sl], table)
    assert big.finish() == small.finish()
