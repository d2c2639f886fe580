"""Context models: how the latent y of one view is coded given its hyperprior parameters.

Two variants share one interface:

* ``CheckerboardContext`` (LDMIC-fast, He et al. 2021): anchors ((row + col) odd) are coded from the hyperprior
  alone, then non-anchors from the hyperprior and a 5x5 checkerboard-masked convolution of the decoded anchors.
  Two parallel passes.
* ``AutoregressiveContext`` (LDMIC, Minnen et al. 2018): raster scan with a 5x5 causal masked convolution, one
  latent pixel after another. Serial; the best rate.

Each has a float training path (``train_params``: noise / straight-through rounding, differentiable) and an exact
coding path (``code``) in integer arithmetic (fixedpoint.py) used for encoding, decoding and eval-mode estimation
alike, so the eval forward, the encoder and the decoder compute the very same numbers. The entropy-parameter
network (EP) takes ``cat(hyper params, context)`` and gives ``(scales, means)``; anchors see a zero context.
All tensors are (B, C, h, w) with the views of a group on the batch axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mvic.shared.codec._compressai import CheckerboardMaskedConv2d, MaskedConv2d, quantize_ste
from mvic.shared.codec.entropy_coding import CdfTable, CodingSession
from mvic.shared.codec.fixedpoint import (
    ACT_LIMIT,
    ExactOptions,
    dequantize_fixed,
    exact_form,
    from_fixed,
    round_shift,
    run_rows,
)
from mvic.shared.codec.transforms import entropy_parameters


@dataclass(frozen=True)
class CodedLatent:
    """Result of coding y: the dequantized latent and the Gaussian parameters each symbol was coded with."""

    y_hat_fx: Tensor  # (B, M, h, w) float64 integers, units 2**-FRAC_BITS
    scales: Tensor  # (B, M, h, w) float64, the scale-table entry used
    means: Tensor  # (B, M, h, w) float64


@dataclass(frozen=True)
class GaussianTables:
    """What the exact path needs from the GaussianConditional: CDFs and the scale table."""

    cdf: CdfTable
    scale_table: Tensor  # (L,) float64
    scale_bound: float

    def indexes(self, scales: Tensor) -> Tensor:
        """Index of the first table scale >= scale (CompressAI's build_indexes, exact comparisons)."""
        return torch.bucketize(scales.clamp(min=self.scale_bound), self.scale_table[:-1].contiguous())


class _ContextBase(nn.Module):
    def __init__(self, m: int, context: nn.Conv2d):
        super().__init__()
        self.m = m
        self.context_prediction = context
        self.entropy_parameters = entropy_parameters(m)

    def _ep(self, params: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        scales, means = self.entropy_parameters(torch.cat([params, ctx], dim=1)).chunk(2, dim=1)
        return scales, means

    def _ep_exact(self, ep_layers, params_rows: Tensor, ctx_rows: Tensor, tables: GaussianTables):
        """EP on (P, 2M) rows of params and context -> (indexes, table scales, means, means_fx), each (P, M)."""
        out = run_rows(ep_layers, torch.cat([params_rows, ctx_rows], dim=1))  # (P, 2M)
        scales_fx, means_fx = out.chunk(2, dim=1)
        idx = tables.indexes(from_fixed(scales_fx))
        return idx, tables.scale_table[idx], from_fixed(means_fx), means_fx


class CheckerboardContext(_ContextBase):
    def __init__(self, m: int):
        super().__init__(m, CheckerboardMaskedConv2d(m, 2 * m, kernel_size=5, padding=2))

    @staticmethod
    def anchor_mask(h: int, w: int, device) -> Tensor:
        """(h, w) bool, True where (row + col) is odd (LDMIC's anchor parity)."""
        rows = torch.arange(h, device=device).view(-1, 1)
        cols = torch.arange(w, device=device).view(1, -1)
        return (rows + cols) % 2 == 1

    def train_params(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Float path: (scales, means), each (B, M, h, w); anchors quantized straight-through for the context."""
        anchor = self.anchor_mask(*y.shape[-2:], y.device)
        scales_a, means_a = self._ep(params, torch.zeros_like(params))
        y_anchor = (quantize_ste(y - means_a) + means_a) * anchor  # non-anchors zeroed
        scales_n, means_n = self._ep(params, self.context_prediction(y_anchor))
        return torch.where(anchor, scales_a, scales_n), torch.where(anchor, means_a, means_n)

    def code(self, params_fx: Tensor, y: Tensor | None, session: CodingSession, tables: GaussianTables,
             opts: ExactOptions) -> CodedLatent:
        b, _, h, w = params_fx.shape
        m = self.m
        ep = exact_form(self.entropy_parameters)
        ctx_conv = exact_form(self.context_prediction)
        anchor = self.anchor_mask(h, w, params_fx.device)
        y_hat_fx = params_fx.new_zeros(b, m, h, w)
        scales = params_fx.new_zeros(b, m, h, w)
        means = params_fx.new_zeros(b, m, h, w)
        ctx_fx = None
        for sites in (anchor, ~anchor):  # anchors first, then non-anchors
            p = int(sites.sum())
            params_rows = params_fx[:, :, sites].permute(0, 2, 1).reshape(b * p, 2 * m)  # (B*P, 2M)
            if ctx_fx is None:
                ctx_rows = torch.zeros_like(params_rows)
            else:
                ctx_rows = ctx_fx[:, :, sites].permute(0, 2, 1).reshape(b * p, 2 * m)  # (B*P, 2M)
            idx, sc, mu, mu_fx = (t.view(b, p, m).permute(0, 2, 1)  # (B, M, P)
                                  for t in self._ep_exact(ep, params_rows, ctx_rows, tables))
            target = y[:, :, sites] if y is not None else None
            symbols = session.code(target, mu, idx, tables.cdf)  # (B, M, P)
            y_hat_fx[:, :, sites] = dequantize_fixed(symbols, mu_fx)
            scales[:, :, sites] = sc
            means[:, :, sites] = mu
            if ctx_fx is None:
                ctx_fx = ctx_conv(y_hat_fx, opts)  # y_hat_fx holds anchors only here; (B, 2M, h, w)
        return CodedLatent(y_hat_fx, scales, means)


class AutoregressiveContext(_ContextBase):
    def __init__(self, m: int):
        super().__init__(m, MaskedConv2d(m, 2 * m, kernel_size=5, padding=2, mask_type="A"))

    def train_params(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Float path: the context sees the noisy latent (LDMIC's training recipe)."""
        noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        return self._ep(params, self.context_prediction(noisy))

    def code(self, params_fx: Tensor, y: Tensor | None, session: CodingSession, tables: GaussianTables,
             opts: ExactOptions) -> CodedLatent:
        b, _, h, w = params_fx.shape
        m = self.m
        ep = exact_form(self.entropy_parameters)
        ctx = exact_form(self.context_prediction)  # weight (2M, M, 5, 5), causal taps only
        # The 12 causal taps of the 5x5 mask A: the two rows above (10) and two to the left (2).
        w12 = torch.cat([ctx.weight[:, :, :2, :].reshape(2 * m, -1), ctx.weight[:, :, 2, :2].reshape(2 * m, -1)], 1)
        padded = params_fx.new_zeros(b, m, h + 2, w + 4)  # decoded latent with a 2-pixel causal border
        scales = params_fx.new_zeros(b, m, h, w)
        means = params_fx.new_zeros(b, m, h, w)
        for r in range(h):
            for c in range(w):
                window = torch.cat([padded[:, :, r:r + 2, c:c + 5].reshape(b, -1),
                                    padded[:, :, r + 2, c:c + 2].reshape(b, -1)], dim=1)  # (B, 12M)
                acc = window @ w12.t() + ctx.bias  # (B, 2M), exact integers
                ctx_rows = round_shift(acc, ctx.inv_scale).clamp_(-ACT_LIMIT, ACT_LIMIT)
                idx, sc, mu, mu_fx = self._ep_exact(ep, params_fx[:, :, r, c], ctx_rows, tables)  # (B, M) each
                target = y[:, :, r, c] if y is not None else None
                symbols = session.code(target, mu, idx, tables.cdf)  # (B, M)
                padded[:, :, r + 2, c + 2] = dequantize_fixed(symbols, mu_fx)
                scales[:, :, r, c] = sc
                means[:, :, r, c] = mu
        return CodedLatent(padded[:, :, 2:, 2:w + 2].contiguous(), scales, means)
