"""The latent codec: one view's latent y to rANS symbols and back, through a hyperprior and a context model.

Hop before: ``model.LDMIC`` runs the analysis transform g_a and scales by the rate gain: y, (B, M, h, w), gained.
Hop after: ``model.LDMIC`` scales the decoded y_hat back (``y_inverse[q]``) and runs the joint synthesis (JCT + g_s).
The views of a group are rows of the batch axis B here: every view is coded alone.

    y ──h_a──▶ z * z_gain[q] ──EntropyBottleneck (factorized prior), rANS──▶ z_hat      (B, N, h/4, w/4)
                                                                              │ * z_inverse[q]  (exact)
                                                    params (B, 2M, h, w) ◀──h_s (exact)
    y ──context model (context.py: checkerboard | autoregressive) + params──▶ (scales, means)
      ──GaussianConditional, rANS──▶ y_hat                                                  (B, M, h, w)

CompressAI composes the same thing as ``HyperpriorLatentCodec(h_a, h_s, {"z": ..., "y": ...})``; two things differ:

* Three paths share one piece of code. ``forward`` in training mode adds noise for the rates and rounds
  straight-through for the decoder (mixed quantization). Everything else goes through ``code``, in exact integer
  arithmetic (fixedpoint.py) with a ``CodingSession`` that encodes (``encode``), decodes (``decode``) or only counts
  (``forward`` in eval mode): the eval forward, the encoder and the decoder compute the very same numbers on every
  device.
* It owns no parameters. The modules stay attributes of ``LDMIC``, so the state_dict keys of the shipped weights
  (``h_a.*``, ``h_s.*``, ``entropy_bottleneck.*``, ``gaussian_conditional.*``, ``context.*``, ``gains.*``) never
  change; ``LDMIC.latent_codec`` is this view over them, made on demand.

``stream_floor`` says how short a stream of a given latent size can possibly be (``StreamFloor``): a decoder refuses
a shorter one before decoding it, so a packet's declared size cannot buy more work than its bytes pay for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from mvic.shared.codec._compressai import EntropyBottleneck, GaussianConditional, quantize_ste
from mvic.shared.codec.context import AutoregressiveContext, CheckerboardContext, GaussianTables
from mvic.shared.codec.entropy_coding import CdfTable, CodingSession, DecodeSession, EncodeSession
from mvic.shared.codec.fixedpoint import (
    ACT_LIMIT,
    ExactOptions,
    dequantize_fixed,
    exact_form,
    exact_mode,
    from_fixed,
    round_shift,
    run_layers,
    to_fixed,
)
from mvic.shared.codec.gains import GAIN_BITS, RateGains
from mvic.shared.codec.rans import BYPASS_BITS, PRECISION
from mvic.shared.codec.transforms import Precision, encoder_form, last_in_float32


@dataclass(frozen=True)
class ExactLatents:
    """What the exact entropy model coded, one row per view: the same numbers on every device."""

    y_hat_fx: Tensor  # (B, M, h, w) exact, units 2**-FRAC_BITS, in the gained domain
    scales: Tensor  # (B, M, h, w) table scales the symbols were coded with
    means: Tensor  # (B, M, h, w)
    z_hat: Tensor  # (B, N, h/4, w/4) dequantized hyper latent (gained domain)


@dataclass(frozen=True)
class LatentOutput:
    """The latent codec's forward pass: y_hat for the synthesis, likelihoods for the rate term of the loss."""

    y_hat: Tensor  # (B, M, h, w), gained domain
    likelihoods_y: Tensor  # (B, M, h, w)
    likelihoods_z: Tensor  # (B, N, h/4, w/4)


#: Bits one rANS step can fall short of its symbol's information content, log2(2**16 / frequency). Coding a symbol of
#: frequency f <= 2**16 maps the state x >= min(2**31, 2**15 * f) to at least (x / f - 1) * 2**16, a factor of at most
#: 1 / (1 - 2**-15) below x * 2**16 / f; emitting a 32-bit word first leaves floor(x / 2**32) >= 2**15 * f, at most
#: a factor of 1 + 2**-15 below x / 2**32. Both together are under twice the first.
STEP_SLACK_BITS = -2 * math.log2(1 - 2.0**-15)


@dataclass(frozen=True)
class StreamFloor:
    """The fewest bytes of any stream this latent codec writes, as a function of the latent size.

    Why no stream is shorter: the encoder (CompressAI's ``BufferedRansEncoder``: ryg_rans ``rans64``, 16-bit
    probabilities, 32-bit words) starts in state 2**31 and ends below 2**63, then writes those 64 bits; in between,
    log2(state) + 32 * (words emitted) grows by at least log2(2**16 / f) - ``STEP_SLACK_BITS`` per symbol of
    frequency f, and a bypass nibble (after an escape) adds 4 bits more. So 32 * words > sum(least bits - slack) - 32,
    and a stream is 4 * words + 8 bytes. No symbol costs less than the cheapest one of its table (``_least_bits``):
    z symbols use one table per channel, so each z position costs at least ``bits_per_z`` (the channels' sum); a y
    symbol may use any Gaussian table (the decoded hyperprior chooses), so it costs at least ``bits_per_y``, the
    cheapest table's cheapest symbol. Real streams are far longer, as z alone costs whole bits per position; a
    packet that declares a large image in a few bytes is far shorter.
    """

    bits_per_z: float  # sum over the N channels of (least bits of a symbol of that channel's table - slack)
    bits_per_y: float  # least bits of one y symbol over the Gaussian tables, less the slack (may be < 0)
    m: int  # channels of y

    @classmethod
    def of(cls, z_table: CdfTable, y_table: CdfTable, m: int) -> StreamFloor:
        z = sum(_least_bits(cdf) - STEP_SLACK_BITS for cdf in z_table.cdfs)
        y = min(_least_bits(cdf) for cdf in y_table.cdfs) - STEP_SLACK_BITS
        return cls(z, y, m)

    def min_bytes(self, y_size: tuple[int, int]) -> int:
        """Fewest bytes of a stream coding one view's latents: y of ``y_size`` = (h, w), z of (h/4, w/4)."""
        h, w = y_size
        bits = (h // 4) * (w // 4) * self.bits_per_z + self.m * h * w * self.bits_per_y
        words = max(0, math.ceil((bits - 33) / 32))  # 32 bits of end state, 1 more against rounding in the sums
        return 8 + 4 * words


def _least_bits(cdf: list[int]) -> float:
    """The least a symbol coded with one quantized CDF costs: log2(2**PRECISION / frequency) of its most probable
    symbol, where the last one (the escape of values outside the table) always comes with a bypass nibble."""
    bits = [math.log2((1 << PRECISION) / (b - a)) if b > a else math.inf for a, b in pairwise(cdf)]
    return min([*bits[:-1], bits[-1] + BYPASS_BITS - STEP_SLACK_BITS])


@dataclass(frozen=True, eq=False)
class HyperpriorLatentCodec:
    """Hyperprior + context model of y over the modules of one ``LDMIC`` (which owns them)."""

    h_a: nn.Sequential
    h_s: nn.Sequential
    entropy_bottleneck: EntropyBottleneck
    gaussian_conditional: GaussianConditional
    context: CheckerboardContext | AutoregressiveContext
    gains: RateGains

    def hyper_latent(self, y: Tensor, rate: Tensor) -> Tensor:
        """z = h_a(y) * z_gain[q]: (B, M, h, w) -> (B, N, h/4, w/4), h_a's last layer in float32."""
        return last_in_float32(self.h_a, y) * RateGains.pick(self.gains.z_gain, rate)

    def stream_floor(self) -> StreamFloor:
        """The fewest bytes any stream of a given latent size can take, from the CDF tables (``StreamFloor``)."""
        return StreamFloor.of(CdfTable.of(self.entropy_bottleneck), CdfTable.of(self.gaussian_conditional),
                              self.context.m)

    # -------------------------------------------------------------------------------------- training / eval
    def forward(self, y: Tensor, rate: Tensor, *, training: bool) -> LatentOutput:
        """y: (B, M, h, w) gained latents; rate: (B,) rate indexes. Training: noise and straight-through rounding.
        Eval: the exact coding path without the rANS coder, so y_hat is what the decoder will get."""
        z = self.hyper_latent(y, rate)
        if not training:
            lat = self.code(y, z, rate, CodingSession(y.shape[0]), ExactOptions())
            _, lik_z = self.entropy_bottleneck(lat.z_hat, training=False)
            y_hat = from_fixed(lat.y_hat_fx).float()
            return LatentOutput(y_hat, self._likelihood_y(y_hat, lat), lik_z)
        # Under autocast (bf16 training) the entropy model still runs in float32: likelihoods and rounding offsets
        # need the precision; the transforms and the JCT may run in lower precision, except the last convolutions
        # of g_a and h_a, whose outputs are the latents.
        with torch.autocast(y.device.type, enabled=False):
            y, z = y.float(), z.float()
            _, lik_z = self.entropy_bottleneck(z)
            medians = self.entropy_bottleneck._get_medians().view(1, -1, 1, 1)  # (1, N, 1, 1)
            z_hat = quantize_ste(z - medians) + medians
            params = self.h_s(z_hat * RateGains.pick(self.gains.z_inverse, rate))  # (B, 2M, h, w)
            scales, means = self.context.train_params(y, params)
            _, lik_y = self.gaussian_conditional(y, scales, means)
            y_hat = quantize_ste(y - means) + means
        return LatentOutput(y_hat, lik_y, lik_z)

    def _likelihood_y(self, y_hat: Tensor, lat: ExactLatents) -> Tensor:
        gc = self.gaussian_conditional
        lik = gc._likelihood(y_hat, lat.scales.float(), lat.means.float())
        return gc.likelihood_lower_bound(lik) if gc.use_likelihood_bound else lik

    # ------------------------------------------------------------------------------------- encode / decode
    def encode(self, y: Tensor, rate: Tensor, session: EncodeSession, opts: ExactOptions,
               precision: Precision | str | None = None) -> ExactLatents:
        """Code y (B, M, h, w, gained) into ``session``: z first, then y as the context model orders it.
        ``precision``: None runs h_a as trained; else its fast encoder form (transforms.encoder_form)."""
        if precision is None:
            z = self.hyper_latent(y, rate)
        else:
            z = encoder_form(self.h_a, precision)(y) * RateGains.pick(self.gains.z_gain, rate)  # (B, N, h/4, w/4)
        return self.code(y, z, rate, session, opts)

    def decode(self, rate: Tensor, session: DecodeSession, y_size: tuple[int, int],
               opts: ExactOptions) -> ExactLatents:
        """Read ``len(rate)`` views of latent size ``y_size`` = (h, w) from ``session``.

        On a CPU without ``exact_mode``: its oneDNN switch is process-wide, and a server synthesizes on other threads
        while it entropy-decodes (float32 convolutions without oneDNN are 2.5x slower, bf16 ones 50x). It changes
        nothing here: the exact networks compute in float64, which torch never hands to oneDNN (only float32, bf16
        and float16 convolutions go there), and the determinism tests decode what ``exact_mode`` encoded."""
        if rate.device.type == "cpu":
            return self._code_exact(None, None, rate, session, opts, y_size)
        return self.code(None, None, rate, session, opts, y_size)

    def code(self, y: Tensor | None, z: Tensor | None, rate: Tensor, session: CodingSession, opts: ExactOptions,
             y_size: tuple[int, int] | None = None) -> ExactLatents:
        """The one path that encoder, decoder and eval forward share. y, z: gained latents (None to decode)."""
        with exact_mode(rate.device):
            return self._code_exact(y, z, rate, session, opts, y_size)

    def _code_exact(self, y, z, rate, session, opts, y_size) -> ExactLatents:
        eb = self.entropy_bottleneck
        h, w = y.shape[-2:] if y is not None else y_size
        b = rate.shape[0]
        n = eb.channels
        medians = eb._get_medians().detach().double().view(1, n, 1, 1)  # (1, N, 1, 1)
        z_shape = (b, n, h // 4, w // 4)
        z_idx = torch.arange(n, device=rate.device).view(1, n, 1, 1).expand(z_shape)  # (B, N, h/4, w/4): CDF = channel
        z_sym = session.code(z, medians.expand(z_shape), z_idx, CdfTable.of(eb))  # (B, N, h/4, w/4)
        z_hat_fx = dequantize_fixed(z_sym, to_fixed(medians))
        h_in = round_shift(z_hat_fx * self.gains.z_inverse_fixed(rate), 2.0**-GAIN_BITS)
        params_fx = run_layers(exact_form(self.h_s), h_in.clamp(-ACT_LIMIT, ACT_LIMIT), opts)  # (B, 2M, h, w)
        target = y.double() if y is not None else None
        coded = self.context.code(params_fx, target, session, self._gaussian_tables(), opts)
        return ExactLatents(coded.y_hat_fx, coded.scales, coded.means, (z_sym + medians).float())

    def _gaussian_tables(self) -> GaussianTables:
        gc = self.gaussian_conditional
        return GaussianTables(CdfTable.of(gc), gc.scale_table.double(), float(gc.lower_bound_scale.bound))
