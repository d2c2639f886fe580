"""Exact integer arithmetic carried in float64, for the networks that drive the entropy coder.

Why: the rANS decoder must see the very same scale indexes and means as the encoder, or it derails (CompressAI
#279/#309). Floating-point convolutions differ across thread counts, BLAS/cuDNN algorithms and devices. Here the
hyper synthesis, the context model and the entropy-parameter network run on integers (Ballé et al., ICLR 2019,
"Integer networks"):

* activations are integers ``a`` standing for ``a * 2**-FRAC_BITS``, clamped to ``±ACT_LIMIT``;
* each output channel's weights are integers ``w`` standing for ``w * 2**-s_c`` with ``|w| <= 2**WEIGHT_BITS``;
* an accumulator is a sum of at most ``fan_in`` products, so ``|acc| <= fan_in * 2**WEIGHT_BITS * ACT_LIMIT + |bias|``,
  which ``quantize_conv`` proves below 2**53 for every layer; float64 represents all such integers, and any sum of
  them in any order is exact. So a convolution gives the same integers under any BLAS, thread split, FMA use or
  device, as long as the algorithm only multiplies and adds (direct/im2col/GEMM; not FFT or Winograd: we turn cuDNN
  and oneDNN off inside ``exact_mode``);
* rescaling multiplies by a power of two (exact) and rounds with ``floor(x + 1/2)`` (exact);
* LeakyReLU uses the dyadic slope ``LEAKY_SLOPE`` so the float model and the integer model agree.

Weight quantization itself only multiplies by powers of two and rounds, so it too gives the same integers on every
device from the same float32 weights. Three evaluation paths (``Backend.NATIVE`` = torch's convolution,
``Backend.IM2COL`` = unfold + matrix product, ``Backend.TAPS`` = channels-last matrix products over the kernel's
non-zero taps) give the same integers; tests show the result does not depend on the path. TAPS is the fast one on
a CPU: torch's float64 convolution without oneDNN is a slow reference loop, while TAPS is a few large float64 GEMMs
(BLAS) that skip the taps a mask zeroes (12 of the checkerboard context's 25) and split a transposed convolution
into its stride**2 phases instead of multiplying the zeros of a dilated input.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvic.shared.errors import ExactnessError

FRAC_BITS = 8  # activation resolution 2**-8
ACT_LIMIT = float(2**22)  # |activation| in integer units, i.e. values within ±16384
WEIGHT_BITS = 16  # |integer weight| <= 2**16 per output channel
MAX_SHIFT = 40  # a channel of tiny weights is not scaled beyond 2**40
EXACT_LIMIT = float(2**53)  # float64 holds every integer below this exactly
LEAKY_NUM, LEAKY_SHIFT = 655, 16
LEAKY_SLOPE = LEAKY_NUM / 2**LEAKY_SHIFT  # ~0.01; used by the float model too

_ONE = float(2**FRAC_BITS)


class Backend(str, Enum):
    NATIVE = "native"  # torch.nn.functional.conv2d / conv_transpose2d in float64
    IM2COL = "im2col"  # unfold + matmul in float64
    TAPS = "taps"  # channels-last GEMMs over the non-zero taps, block of output rows by block (the fast one)


@dataclass(frozen=True)
class ExactOptions:
    """How to evaluate the integer networks; every choice gives the same integers."""

    backend: Backend = Backend.NATIVE
    channels_last: bool = False


class _BackendOff:
    """Holds one process-wide torch backend flag off while any thread is inside; the last one out restores it.

    torch's own ``flags()`` context managers save and restore the global flag per call, so threads that interleave
    them (a server's entropy workers) can leave it off for good.
    """

    def __init__(self, backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._inside = 0
        self._saved = True

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._inside == 0:
                self._saved = self._backend.enabled
                self._backend.enabled = False
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    self._backend.enabled = self._saved


_CUDNN_OFF = _BackendOff(torch.backends.cudnn)
_ONEDNN_OFF = _BackendOff(torch.backends.mkldnn)


@contextlib.contextmanager
def exact_mode(device: torch.device | str | None = None) -> Iterator[None]:
    """Disable convolution algorithms that are not plain multiply-adds (cuDNN FFT/Winograd, oneDNN).

    ``device``: where the exact networks run; only its backend is switched off (None: both), so CPU entropy decoding
    never turns cuDNN off under a GPU synthesis running beside it.
    """
    kind = None if device is None else torch.device(device).type
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        if kind != "cpu":
            stack.enter_context(_CUDNN_OFF())
        if kind in (None, "cpu"):
            stack.enter_context(_ONEDNN_OFF())
        yield


def to_fixed(x: Tensor) -> Tensor:
    """Float values -> float64 integers in units of 2**-FRAC_BITS (round half up), clamped."""
    return torch.floor(x.double() * _ONE + 0.5).clamp_(-ACT_LIMIT, ACT_LIMIT)


def from_fixed(x_fx: Tensor) -> Tensor:
    return x_fx * (1.0 / _ONE)


def dequantize_fixed(symbols: Tensor, means_fx: Tensor) -> Tensor:
    """Decoded latent in fixed point: symbol + mean, with the mean already in units of 2**-FRAC_BITS."""
    return (symbols * _ONE + means_fx).clamp(-ACT_LIMIT, ACT_LIMIT)


def round_shift(acc: Tensor, inv_scale: Tensor | float) -> Tensor:
    """round(acc * inv_scale) with inv_scale a power of two: exact."""
    return torch.floor(acc * inv_scale + 0.5)


def leaky_relu_fixed(x_fx: Tensor) -> Tensor:
    return torch.where(x_fx >= 0, x_fx, round_shift(x_fx * LEAKY_NUM, 2.0**-LEAKY_SHIFT))


def _leaky_relu_fixed_(x_fx: Tensor) -> Tensor:
    """``leaky_relu_fixed`` in place, for a temporary: max(x, 0) + round(min(x, 0) * slope), the same integers
    (LEAKY_NUM * 2**-LEAKY_SHIFT is one dyadic number: multiplying by it at once rounds nothing either)."""
    neg = x_fx.clamp(max=0.0)
    return x_fx.clamp_(min=0.0).add_(neg.mul_(LEAKY_NUM * 2.0**-LEAKY_SHIFT).add_(0.5).floor_())


def _requantize_(acc: Tensor, inv_scale: Tensor) -> Tensor:
    """``round_shift(acc, inv_scale)`` clamped to ±ACT_LIMIT, in place on a temporary accumulator."""
    return acc.mul_(inv_scale).add_(0.5).floor_().clamp_(-ACT_LIMIT, ACT_LIMIT)


@dataclass(frozen=True)
class _Phase:
    """Outputs ``out[a + s*j, b + s*i]`` of a convolution (s = 1, a = b = 0 unless transposed: one phase), and the
    taps that reach them: tap t adds input (j + dy, i + dx) times rows [t*C_in, (t+1)*C_in) of ``weight``."""

    a: int
    b: int
    taps: tuple[tuple[int, int], ...]  # (dy, dx) per non-zero tap
    weight: Tensor  # (T*C_in, C_out) float64 integers


_TAPS_BLOCK = 1024  # output pixels per GEMM: a cache-sized block of im2col rows


@dataclass(frozen=True)
class IntConv:
    """An integer form of a Conv2d / ConvTranspose2d (masks applied), ready for exact evaluation."""

    weight: Tensor  # float64 integers, same layout as the float module's weight
    inv_scale: Tensor  # (C_out,) float64 powers of two, 2**-s_c
    bias: Tensor  # (C_out,) float64 integers at accumulator scale 2**-(FRAC_BITS + s_c)
    stride: int
    padding: int
    output_padding: int
    transposed: bool

    def __call__(self, x_fx: Tensor, opts: ExactOptions = ExactOptions()) -> Tensor:
        if opts.channels_last:
            x_fx = x_fx.contiguous(memory_format=torch.channels_last)
        if opts.backend is Backend.TAPS:
            return self._taps(x_fx)
        if opts.backend is Backend.IM2COL:
            acc = self._im2col(x_fx)
        elif self.transposed:
            acc = F.conv_transpose2d(x_fx, self.weight, None, self.stride, self.padding, self.output_padding)
        else:
            acc = F.conv2d(x_fx, self.weight, None, self.stride, self.padding)
        acc = acc + self.bias.view(1, -1, 1, 1)
        return round_shift(acc, self.inv_scale.view(1, -1, 1, 1)).clamp_(-ACT_LIMIT, ACT_LIMIT)

    def rows(self, x_rows: Tensor) -> Tensor:
        """A 1x1 convolution applied to rows of channel vectors: (P, C_in) -> (P, C_out)."""
        return _requantize_(torch.addmm(self.bias, x_rows, self.rows_weight), self.inv_scale)

    def patch_rows(self, patches: Tensor) -> Tensor:
        """A stride-1 convolution at chosen output pixels: (P, T*C_in) input patches, the taps in
        ``phases[0].taps`` order, -> (P, C_out) requantized; the same integers as the whole convolution there."""
        return _requantize_(torch.addmm(self.bias, patches, self.phases[0].weight), self.inv_scale)

    @cached_property
    def rows_weight(self) -> Tensor:
        """The weight as a (C_in, C_out) matrix for ``rows``."""
        return self.weight.reshape(self.weight.shape[0], -1).t().contiguous()

    @cached_property
    def phases(self) -> list[_Phase]:
        """The output phases of ``Backend.TAPS``: one for a convolution, stride**2 for a transposed one."""
        k, s, p = self.weight.shape[-1], self.stride, self.padding
        w = self.weight.transpose(0, 1) if self.transposed else self.weight  # (C_out, C_in, k, k)
        live = [(ky, kx) for ky in range(k) for kx in range(k) if bool(w[:, :, ky, kx].any())]
        if not self.transposed:  # out[j] reads in[s*j + ky - p]
            groups = {(0, 0): [(ky - p, kx - p, ky, kx) for ky, kx in live]}
        else:  # out[s*j + a] = sum over ky = a + p (mod s) of in[j + (a + p - ky) / s] * w[ky]
            groups = {(a, b): [((a + p - ky) // s, (b + p - kx) // s, ky, kx) for ky, kx in live
                               if (a + p - ky) % s == 0 and (b + p - kx) % s == 0] for a in range(s) for b in range(s)}
        phases = []
        for (a, b), taps in groups.items():
            mats = [w[:, :, ky, kx].t() for _, _, ky, kx in taps]  # each (C_in, C_out)
            weight = torch.cat(mats).contiguous() if mats else w.new_zeros(0, w.shape[0])  # (T*C_in, C_out)
            phases.append(_Phase(a, b, tuple((dy, dx) for dy, dx, _, _ in taps), weight))
        return phases

    def _taps(self, x_fx: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, Ho, Wo) (channels-last in memory) by GEMMs over blocks of output rows.

        Each phase reads its input with step 1, so the input zero-padded by k and flattened to
        (rows * padded width, C_in) rows makes each tap's input block one contiguous slice: output row j, column i of the padded-width grid reads flat row
        (j + k + dy) * Wp + i + k + dx, so a block of output rows costs one GEMM per tap and no copies; the 2k
        columns of the padded width beyond the real ones are computed and dropped.
        """
        b, c, h, w = x_fx.shape
        k, s, p = self.weight.shape[-1], self.stride, self.padding
        if self.transposed:
            ho, wo = (h - 1) * s - 2 * p + k + self.output_padding, (w - 1) * s - 2 * p + k + self.output_padding
            out_step = s  # phase (a, b) holds out[a::s, b::s]
        elif s == 1:
            ho, wo, out_step = h + 2 * p - k + 1, w + 2 * p - k + 1, 1
        else:  # strided convolutions are not on any exact path; the reference gives the same integers
            return self(x_fx, ExactOptions())
        hp, wp = h + 2 * k + 1, w + 2 * k  # one spare zero row: the last block's slices may run into it
        xp = F.pad(x_fx, (k, k, k, k + 1)).permute(0, 2, 3, 1).contiguous()  # (B, Hp, Wp, C_in)
        c_out = self.bias.shape[0]
        out = x_fx.new_empty(b, ho, wo, c_out)  # (B, Ho, Wo, C_out)
        for ph in self.phases:
            dest = out[:, ph.a::out_step, ph.b::out_step]  # (B, rows, cols, C_out), a view
            rows, cols = dest.shape[1:3]
            per_block = max(1, _TAPS_BLOCK // wp)
            for i in range(b):
                flat = xp[i].view(hp * wp, c)  # (Hp*Wp, C_in)
                for j0 in range(0, rows, per_block):
                    n = min(per_block, rows - j0)
                    acc = self.bias.expand(n * wp, c_out).clone()  # (n*Wp, C_out)
                    for t, (dy, dx) in enumerate(ph.taps):
                        start = (j0 + k + dy) * wp + k + dx
                        acc.addmm_(flat[start:start + n * wp], ph.weight[t * c:(t + 1) * c])  # exact integers
                    acc = acc.view(n, wp, c_out)[:, :cols]  # (n, cols, C_out)
                    dest[i, j0:j0 + n] = _requantize_(acc, self.inv_scale)
        return out.permute(0, 3, 1, 2)  # (B, C_out, Ho, Wo), channels-last in memory

    def _im2col(self, x: Tensor) -> Tensor:
        k = self.weight.shape[-1]
        if self.transposed:
            # A transposed convolution is a stride-1 convolution of the zero-dilated input with the flipped,
            # in/out-swapped kernel, padded by k-1-p (plus output_padding on the bottom/right).
            b, c, h, w = x.shape
            s = self.stride
            dil = x.new_zeros(b, c, (h - 1) * s + 1, (w - 1) * s + 1)
            dil[:, :, ::s, ::s] = x
            p = k - 1 - self.padding
            x = F.pad(dil, (p, p + self.output_padding, p, p + self.output_padding))
            weight = self.weight.flip(-1, -2).transpose(0, 1)  # (C_out, C_in, k, k)
            stride, padding = 1, 0
        else:
            weight, stride, padding = self.weight, self.stride, self.padding
        b, _, h, w = x.shape
        ho = (h + 2 * padding - k) // stride + 1
        wo = (w + 2 * padding - k) // stride + 1
        cols = F.unfold(x, k, padding=padding, stride=stride)  # (B, C_in*k*k, Ho*Wo)
        out = weight.reshape(weight.shape[0], -1) @ cols  # (B, C_out, Ho*Wo)
        return out.view(b, -1, ho, wo)


def quantize_conv(module: nn.Module) -> IntConv:
    """Integer form of a (masked) Conv2d or ConvTranspose2d; raises ExactnessError if it could overflow."""
    transposed = isinstance(module, nn.ConvTranspose2d)
    if not isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        raise ExactnessError(f"{type(module).__name__} has no integer form; only convolutions do")
    if module.groups != 1 or module.dilation not in ((1, 1), 1):
        raise ExactnessError("grouped or dilated convolutions have no integer form here")
    # on the CPU whatever the module's device: the integers must not depend on a device's exp2/frexp
    w = module.weight.detach().cpu().double()
    mask = getattr(module, "mask", None)
    if mask is not None:
        w = w * mask.detach().cpu().double()
    out_dim = 1 if transposed else 0
    other = tuple(d for d in range(w.dim()) if d != out_dim)
    maxabs = w.abs().amax(dim=other)
    _, exponent = torch.frexp(maxabs)  # maxabs < 2**exponent
    shift = (WEIGHT_BITS - exponent.double()).clamp(max=MAX_SHIFT)
    shape = [1] * w.dim()
    shape[out_dim] = -1
    w_int = torch.round(w * torch.exp2(shift).view(shape))
    bias = module.bias.detach().cpu().double() if module.bias is not None else w.new_zeros(maxabs.shape)
    b_int = torch.round(bias * torch.exp2(shift + FRAC_BITS))
    fan_in = w[0].numel() if not transposed else w.shape[0] * w.shape[2] * w.shape[3]
    bound = fan_in * float(w_int.abs().max()) * ACT_LIMIT + float(b_int.abs().max())
    if bound >= EXACT_LIMIT:
        raise ExactnessError(
            f"{type(module).__name__} could reach {bound:.3g} >= 2**53 in integer form; its bias or fan-in is too "
            "large for exact float64 arithmetic (retrain with smaller biases or lower FRAC_BITS)"
        )
    pad = module.padding[0]
    out_pad = module.output_padding[0] if transposed else 0
    device = module.weight.device
    return IntConv(w_int.to(device), torch.exp2(-shift).to(device), b_int.to(device), module.stride[0], pad, out_pad,
                   transposed)


IntLayer = IntConv | str  # "leaky" marks a LeakyReLU between convolutions


def quantize_sequential(seq: nn.Sequential) -> list[IntLayer]:
    """Integer form of a Sequential of convolutions and LeakyReLU(LEAKY_SLOPE)."""
    layers: list[IntLayer] = []
    for m in seq:
        if isinstance(m, nn.LeakyReLU):
            if m.negative_slope != LEAKY_SLOPE:
                raise ExactnessError(f"LeakyReLU slope {m.negative_slope} is not the dyadic {LEAKY_SLOPE}")
            layers.append("leaky")
        else:
            layers.append(quantize_conv(m))
    return layers


def exact_form(module: nn.Module) -> list[IntLayer] | IntConv:
    """The integer form of a convolution or Sequential, computed once and kept on the module until its weights,
    mask or device change (a training step, a load, a ``to``): every exact call would otherwise pay host syncs."""
    key = tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))
    cached = module.__dict__.get("_mvic_exact_form")
    if cached is not None and cached[0] == key:
        return cached[1]
    form = quantize_sequential(module) if isinstance(module, nn.Sequential) else quantize_conv(module)
    module.__dict__["_mvic_exact_form"] = (key, form)
    return form


def run_layers(layers: list[IntLayer], x_fx: Tensor, opts: ExactOptions) -> Tensor:
    """Evaluate an integer Sequential on a (B, C, H, W) fixed-point tensor."""
    for i, layer in enumerate(layers):
        if isinstance(layer, str):
            x_fx = _leaky_relu_fixed_(x_fx) if i else leaky_relu_fixed(x_fx)  # after a layer: its own temporary
        else:
            x_fx = layer(x_fx, opts)
    return x_fx


def run_rows(layers: list[IntLayer], rows: Tensor) -> Tensor:
    """Evaluate an integer Sequential of 1x1 convolutions on (P, C) rows."""
    for i, layer in enumerate(layers):
        if isinstance(layer, str):
            rows = _leaky_relu_fixed_(rows) if i else leaky_relu_fixed(rows)
        else:
            rows = layer.rows(rows)
    return rows
