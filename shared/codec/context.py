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
import torch.nn.functional as F
from torch import Tensor, nn

from mvic.shared.codec._compressai import CheckerboardMaskedConv2d, MaskedConv2d, quantize_ste
from mvic.shared.codec.entropy_coding import CdfTable, CodingSession
from mvic.shared.codec.fixedpoint import (
    ACT_LIMIT,
    ExactOptions,
    IntConv,
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
        h, w = params_fx.shape[-2:]
        if h % 2 or w % 2:
            return self._code_masked(params_fx, y, session, tables, opts)
        return self._code_lattice(params_fx, y, session, tables)

    def _code_lattice(self, params_fx: Tensor, y: Tensor | None, session: CodingSession,
                      tables: GaussianTables) -> CodedLatent:
        """``code`` for an even h and w: each pass gathers its sites with strided views (``Checkerboard``) and the
        context convolution runs at the non-anchors only (the anchors' context is never used)."""
        b, _, h, w = params_fx.shape
        m, grid = self.m, Checkerboard(h, w)
        ep = exact_form(self.entropy_parameters)
        y_hat_fx = params_fx.new_zeros(b, m, h, w)
        scales = params_fx.new_zeros(b, m, h, w)
        means = params_fx.new_zeros(b, m, h, w)
        p = grid.sites
        for anchors in (True, False):
            params_rows = grid.rows(params_fx, anchors)  # (B*P, 2M)
            ctx_rows = (torch.zeros_like(params_rows) if anchors
                        else grid.conv_rows(exact_form(self.context_prediction), y_hat_fx))  # (B*P, 2M)
            idx, sc, mu, mu_fx = (t.view(b, p, m).permute(0, 2, 1)  # (B, M, P)
                                  for t in self._ep_exact(ep, params_rows, ctx_rows, tables))
            target = grid.take(y, anchors).reshape(b, m, p) if y is not None else None
            symbols = session.code(target, mu, idx, tables.cdf)  # (B, M, P)
            grid.put(y_hat_fx, dequantize_fixed(symbols, mu_fx), anchors)
            grid.put(scales, sc, anchors)
            grid.put(means, mu, anchors)
        return CodedLatent(y_hat_fx, scales, means)

    def _code_masked(self, params_fx: Tensor, y: Tensor | None, session: CodingSession, tables: GaussianTables,
                     opts: ExactOptions) -> CodedLatent:
        """``code`` for any h and w: sites by boolean mask, the context convolution over the whole latent."""
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


class Checkerboard:
    """The two site lattices of an even (h, w) latent as strided views, in the boolean mask's (row-major) order.

    Anchors ((row + col) odd) sit at odd columns of even rows and even columns of odd rows; each row holds w/2
    sites of either kind, so a lattice is a (B, C, h, w/2) tensor whose row r interleaves the two slices.
    """

    _CONV_ROWS = 8  # latent rows per context-convolution GEMM (even): bounds the patch matrix to a few MiB

    def __init__(self, h: int, w: int):
        if h % 2 or w % 2:
            raise ValueError(f"a checkerboard lattice needs an even latent size, not {h}x{w}")
        self.h, self.w = h, w
        self.sites = h * w // 2

    @staticmethod
    def _slices(x: Tensor, anchors: bool) -> tuple[Tensor, Tensor]:
        """(..., H, W) -> the (even rows, odd rows) strided views of one lattice."""
        first = 1 if anchors else 0  # the lattice's first column in even rows
        return x[..., 0::2, first::2], x[..., 1::2, 1 - first::2]

    def take(self, x: Tensor, anchors: bool) -> Tensor:
        """(B, C, h, w) -> (B, C, h, w/2): the lattice's values, a copy."""
        even, odd = self._slices(x, anchors)
        return torch.stack([even, odd], dim=3).reshape(*x.shape[:2], self.h, self.w // 2)

    def rows(self, x: Tensor, anchors: bool) -> Tensor:
        """(B, C, h, w) -> (B*P, C): one row of channels per site."""
        return self.take(x, anchors).permute(0, 2, 3, 1).reshape(-1, x.shape[1])

    def put(self, dest: Tensor, values: Tensor, anchors: bool) -> None:
        """Write (B, C, P) lattice values into (B, C, h, w) ``dest`` at the lattice's sites."""
        b, c = dest.shape[:2]
        v = values.reshape(b, c, self.h // 2, 2, self.w // 2)
        even, odd = self._slices(dest, anchors)
        even.copy_(v[:, :, :, 0])
        odd.copy_(v[:, :, :, 1])

    def conv_rows(self, conv: IntConv, x_fx: Tensor) -> Tensor:
        """``conv`` (stride 1, odd square kernel, 'same' padding) of (B, C, h, w) ``x_fx`` at the non-anchor sites
        only: (B*P, C_out) rows, the integers the whole convolution gives there, at half its cost."""
        b, c, h, w = x_fx.shape
        pad = conv.padding
        taps = conv.phases[0].taps
        xp = F.pad(x_fx, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, h+2p, w+2p, C), a view
        out = x_fx.new_empty(b, h, w // 2, conv.bias.shape[0])  # (B, h, w/2, C_out)
        step = self._CONV_ROWS
        for r0 in range(0, h, step):
            n = min(step, h - r0)
            patches = x_fx.new_empty(b, n // 2, 2, w // 2, len(taps), c)  # (B, n/2, 2, w/2, T, C)
            for t, (dy, dx) in enumerate(taps):
                window = xp[:, pad + dy + r0:pad + dy + r0 + n, pad + dx:pad + dx + w]  # (B, n, w, C)
                even, odd = window[:, 0::2, 0::2], window[:, 1::2, 1::2]  # non-anchors; r0 is even
                patches[:, :, 0, :, t] = even
                patches[:, :, 1, :, t] = odd
            rows = conv.patch_rows(patches.view(-1, len(taps) * c))  # (B*n*w/2, C_out)
            out[:, r0:r0 + n] = rows.view(b, n, w // 2, -1)
        return out.reshape(-1, out.shape[-1])


class AutoregressiveContext(_ContextBase):
    def __init__(self, m: int):
        super().__init__(m, MaskedConv2d(m, 2 * m, kernel_size=5, padding=2, mask_type="A"))

    #: Training only: a second pass whose context sees what the coder will, round(y - means) + means with the first
    #: pass's means, instead of the noisy latent alone (set by ``optim.ar_two_pass``; no effect on coding).
    two_pass = False

    def train_params(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Float path: the context sees the noisy latent (LDMIC's training recipe); with ``two_pass``, then the
        latent rounded around those means (detached), closer to the decoded values the coder's context sees."""
        noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        scales, means = self._ep(params, self.context_prediction(noisy))
        if not self.two_pass:
            return scales, means
        rounded = (torch.round(y - means) + means).detach()  # (B, M, h, w)
        return self._ep(params, self.context_prediction(rounded))

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
