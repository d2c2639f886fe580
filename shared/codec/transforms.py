"""Analysis and synthesis transforms of LDMIC (paper Fig. 2; Minnen et al. 2018 shapes).

Per view, with shared weights: ``analysis`` g_a (x -> y, stride 16) and ``hyper_analysis`` h_a (y -> z, stride 4)
run on the camera. ``hyper_synthesis`` h_s (z -> entropy parameters) runs on both sides in exact integer form
(see fixedpoint.py). The joint decoder's two synthesis halves live here too; the JCT modules between them are in
jct.py and the assembly in model.py.

``encoder_form`` is the camera's fast way to run g_a and h_a: their outputs only have to be good latents, not
bit-exact ones (the decoder never runs them; the entropy model that follows is exact). It runs them channels-last,
in bf16 where the CPU multiplies bf16 natively (AMX or AVX512-BF16: ``Precision.AUTO``), with GDN evaluated in
place on cache-sized blocks of pixels, and their last convolution in float32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvic.shared.codec._compressai import GDN, conv, deconv
from mvic.shared.codec.fixedpoint import LEAKY_SLOPE


def analysis(n: int, m: int) -> nn.Sequential:
    """g_a: (B, 3, H, W) -> (B, M, H/16, W/16)."""
    return nn.Sequential(conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m))


def hyper_analysis(n: int, m: int) -> nn.Sequential:
    """h_a: (B, M, h, w) -> (B, N, h/4, w/4). No abs(), as in LDMIC."""
    return nn.Sequential(
        conv(m, n, kernel_size=3, stride=1), nn.LeakyReLU(LEAKY_SLOPE),
        conv(n, n), nn.LeakyReLU(LEAKY_SLOPE),
        conv(n, n),
    )


def hyper_synthesis(n: int, m: int) -> nn.Sequential:
    """h_s: (B, N, h/4, w/4) -> (B, 2M, h, w). Only convolutions and LeakyReLU, so it has an integer form."""
    mid = m * 3 // 2
    return nn.Sequential(
        deconv(n, n), nn.LeakyReLU(LEAKY_SLOPE),
        deconv(n, mid), nn.LeakyReLU(LEAKY_SLOPE),
        conv(mid, 2 * m, kernel_size=3, stride=1),
    )


def entropy_parameters(m: int) -> nn.Sequential:
    """EP: 1x1 convolutions cat(hyper params, context) (4M) -> (scales, means) (2M)."""
    return nn.Sequential(
        nn.Conv2d(4 * m, m * 10 // 3, 1), nn.LeakyReLU(LEAKY_SLOPE),
        nn.Conv2d(m * 10 // 3, m * 8 // 3, 1), nn.LeakyReLU(LEAKY_SLOPE),
        nn.Conv2d(m * 8 // 3, 2 * m, 1),
    )


def synthesis_first_half(n: int, m: int) -> nn.Sequential:
    """decoder_1: (B*V, M, h, w) -> (B*V, N, 4h, 4w)."""
    return nn.Sequential(deconv(m, n), GDN(n, inverse=True), deconv(n, n), GDN(n, inverse=True))


def synthesis_second_half(n: int) -> nn.Sequential:
    """decoder_2: (B*V, N, 4h, 4w) -> (B*V, 3, 16h, 16w)."""
    return nn.Sequential(deconv(n, n), GDN(n, inverse=True), deconv(n, 3))


def last_in_float32(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``seq(x)`` with its last layer in float32, outside any autocast: under bf16 autocast the latents (outputs of
    g_a and h_a) would otherwise be rounded to 8 significant bits before the entropy model sees them."""
    hidden = seq[:-1](x)
    with torch.autocast(x.device.type, enabled=False):
        return seq[-1](hidden.float())


# ------------------------------------------------------------------------------------------ encoder fast path
class Precision(str, Enum):
    """Arithmetic of the camera-side transforms (g_a, h_a). The bitstream decodes the same way whatever it is."""

    AUTO = "auto"  # bf16 where the CPU has native bf16 (see native_bf16), float32 elsewhere
    FP32 = "fp32"
    BF16 = "bf16"


#: CPU flags (Linux /proc/cpuinfo) of native bf16 matrix arithmetic: AMX tiles or AVX512-BF16 dot products.
_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether bf16 convolutions are fast here: an x86 CPU with AMX-BF16 or AVX512-BF16, and torch dispatching
    AVX-512 kernels (``ATEN_CPU_CAPABILITY=avx2`` turns it off). Elsewhere (ARM, older x86) bf16 is emulated and
    slower than float32, so ``Precision.AUTO`` picks float32 there."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool(_BF16_FLAGS & set(flags))


def resolve_precision(precision: Precision | str) -> Precision:
    """``Precision.AUTO`` -> BF16 or FP32 for this CPU; the others as given."""
    precision = Precision(precision)
    if precision is Precision.AUTO:
        return Precision.BF16 if native_bf16() else Precision.FP32
    return precision


@dataclass(frozen=True)
class _FastConv:
    weight: Tensor  # channels-last, in the compute dtype (float32 for the last layer)
    bias: Tensor | None
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class _FastGDN:
    gamma_t: Tensor  # (C_in, C_out): norm rows = (x * x) rows @ gamma_t + beta
    beta: Tensor  # (C,)


@dataclass(frozen=True)
class _FastLeaky:
    slope: float


_GDN_BLOCK = 8192  # pixels per GDN block: a few hundred KiB, so x*x, the norm and the product stay in cache


class EncoderForm:
    """An inference-only copy of an encoder-side Sequential of Conv2d, GDN and LeakyReLU layers."""

    def __init__(self, seq: nn.Sequential, dtype: torch.dtype):
        self.dtype = dtype
        self.layers: list[_FastConv | _FastGDN | _FastLeaky] = []
        for i, layer in enumerate(seq):
            dt = torch.float32 if i == len(seq) - 1 else dtype
            if isinstance(layer, nn.Conv2d):
                bias = None if layer.bias is None else layer.bias.detach().to(dt)
                self.layers.append(_FastConv(layer.weight.detach().to(dt).contiguous(memory_format=torch.channels_last),
                                             bias, layer.stride, layer.padding))
            elif isinstance(layer, GDN) and not layer.inverse:
                c = layer.beta.shape[0]
                gamma = layer.gamma_reparam(layer.gamma).detach().reshape(c, c)  # (C_out, C_in)
                self.layers.append(_FastGDN(gamma.t().contiguous().to(dt), layer.beta_reparam(layer.beta).detach().to(dt)))
            elif isinstance(layer, nn.LeakyReLU):
                self.layers.append(_FastLeaky(layer.negative_slope))
            else:
                raise TypeError(f"{type(layer).__name__} has no fast encoder form")
        if not isinstance(self.layers[-1], _FastConv):
            raise TypeError("an encoder form must end with a convolution (its output is a latent)")

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """(B, C, H, W) float32 -> (B, C', H', W') float32, contiguous."""
        h = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        for layer in self.layers:
            if isinstance(layer, _FastConv):
                if layer.weight.dtype != h.dtype:  # the last convolution: the latents, in float32
                    h = h.float()
                h = F.conv2d(h, layer.weight, layer.bias, layer.stride, layer.padding)
            elif isinstance(layer, _FastGDN):
                h = _gdn_in_place(h.contiguous(memory_format=torch.channels_last), layer)
            else:
                h = F.leaky_relu_(h, layer.slope)
        return h.contiguous()


def _gdn_in_place(h: Tensor, gdn: _FastGDN) -> Tensor:
    """GDN, y = x / sqrt(beta + gamma (x * x)), on a channels-last tensor, block of pixels by block of pixels."""
    rows = h.permute(0, 2, 3, 1).view(-1, h.shape[1])  # (B*H*W, C), a view of h (never a copy)
    for start in range(0, rows.shape[0], _GDN_BLOCK):
        block = rows[start:start + _GDN_BLOCK]  # (P, C)
        norm = torch.addmm(gdn.beta, block * block, gdn.gamma_t)
        block.mul_(norm.rsqrt_())
    return h


def encoder_form(seq: nn.Sequential, precision: Precision | str) -> EncoderForm:
    """The fast form of g_a or h_a for ``precision`` (AUTO resolved for this CPU), made once and kept on the module
    until its weights change (as ``fixedpoint.exact_form`` does)."""
    dtype = torch.bfloat16 if resolve_precision(precision) is Precision.BF16 else torch.float32
    key = (dtype, *((t.data_ptr(), t._version) for t in (*seq.parameters(), *seq.buffers())))
    cached = seq.__dict__.get("_mvic_encoder_form")
    if cached is not None and cached[0] == key:
        return cached[1]
    form = EncoderForm(seq, dtype)
    seq.__dict__["_mvic_encoder_form"] = (key, form)
    return form
