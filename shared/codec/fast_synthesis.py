"""The joint decoder's fast synthesis: JCT + synthesis in bfloat16 channels-last where the CPU has native bf16.

Hop before: ``LDMIC.entropy_decode`` gives exact integer latents, whatever is chosen here (fixedpoint.py).
Hop after: ``LDMIC.synthesize`` rounds the reconstruction to pixels.

Only the networks that drive the entropy coder must be exact; the synthesis (JCT + g_s, after entropy decoding) only
has to look the same, so it may use any arithmetic. ``synthesis_precision`` resolves the server's
``decode.precision`` (``transforms.Precision``, the encoder's enum) for the device that synthesizes:

    AUTO   bf16 on a CPU with native bf16 (``transforms.native_bf16``: AMX or AVX512-BF16), float32 elsewhere (a GPU
           keeps float32: synthesis is a small share there, and it stays within one grey level of the CPU's float32)
    FP32   the model's own float32 modules, as trained
    BF16   the bf16 copy on any device (emulated, so slower, on a CPU without native bf16)

``bf16_synthesis`` makes the copy once per model and weights and keeps it outside the module tree (never in a
state_dict). Two things keep it accurate: each GDN is folded into plain (gamma, beta) tensors computed in float32
before the cast (its reparametrization subtracts a pedestal of 2**-36 from squares, which bf16 would round away), and
the last layer's bias is shifted by -``OUTPUT_SHIFT`` so its outputs lie in [-0.5, 0.5], where a bf16 step is at most
a quarter of a grey level, and the shift is undone in float32.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvic.shared.codec._compressai import GDN
from mvic.shared.codec.transforms import Precision, native_bf16

OUTPUT_SHIFT = 0.5  # the bf16 copy's last layer gives x_hat - 0.5; the caller adds it back in float32


def synthesis_precision(requested: Precision | str, device: torch.device | str) -> Precision:
    """AUTO -> BF16 for a CPU with native bf16, else FP32; FP32 and BF16 as given."""
    requested = Precision(requested)
    if requested is not Precision.AUTO:
        return requested
    return Precision.BF16 if torch.device(device).type == "cpu" and native_bf16() else Precision.FP32


class FoldedGDN(nn.Module):
    """GDN (x / sqrt(beta + gamma x^2)) or inverse GDN (x * sqrt(...)) with gamma and beta reparametrized once, the
    sum over channels as a 1x1 convolution, as CompressAI's ``GDN`` computes it."""

    def __init__(self, gdn: GDN):
        super().__init__()
        c = gdn.beta.shape[0]
        with torch.no_grad():
            self.register_buffer("gamma", gdn.gamma_reparam(gdn.gamma).reshape(c, c, 1, 1).clone())  # (C, C, 1, 1)
            self.register_buffer("beta", gdn.beta_reparam(gdn.beta).clone())  # (C,)
        self.inverse = gdn.inverse

    def forward(self, x: Tensor) -> Tensor:
        norm = F.conv2d(x * x, self.gamma, self.beta)  # (N, C, H, W)
        return x * (norm.sqrt_() if self.inverse else norm.rsqrt_())


def _fold_gdn(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, GDN):
            setattr(module, name, FoldedGDN(child))
        else:
            _fold_gdn(child)
    return module


def bf16_synthesis(modules: tuple[nn.Module, ...]) -> tuple[nn.Module, ...]:
    """bf16 channels-last copies of the synthesis modules in order (jct_1, synthesis_1, jct_2, synthesis_2[,
    refine_head]), GDNs folded, synthesis_2's last convolution shifted by -``OUTPUT_SHIFT``; kept on the first module
    until a weight changes."""
    key = tuple((t.data_ptr(), t._version, t.device) for m in modules for t in (*m.parameters(), *m.buffers()))
    cached = modules[0].__dict__.get("_mvic_bf16_synthesis")
    if cached is not None and cached[0] == key:
        return cached[1]
    copies = [_fold_gdn(copy.deepcopy(m)).eval() for m in modules]
    copies[0].__dict__.pop("_mvic_bf16_synthesis", None)  # a stale copy's copy
    last = copies[3][-1]  # synthesis_2's last deconvolution: 3 channels in [0, 1]
    with torch.no_grad():
        last.bias -= OUTPUT_SHIFT
    copies = tuple(c.to(torch.bfloat16, memory_format=torch.channels_last) for c in copies)
    modules[0].__dict__["_mvic_bf16_synthesis"] = (key, copies)
    return copies
