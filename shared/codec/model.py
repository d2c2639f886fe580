"""LDMIC assembled: per-view encoder, exact entropy model, joint decoder. The codec's public API.

Hop before: a camera frame, (H, W, 3) uint8 (``mvic.node`` capture, or a file for ``mvic-codec``).
Hop after: ``compress_view`` -> ``ViewBitstream`` -> ``mvic.shared.bitstream.pack`` -> gRPC / file;
``decompress(views)`` -> ``DecodedView`` images for the sinks.

Encoder (one view, CPU): x -> g_a -> y * gain_y[q] -> h_a -> z * gain_z[q] -> rANS(z) -> h_s (exact) ->
context model (exact) -> rANS(y). Decoder (any K >= 1 views of one group, any device), in two stages that
``decompress`` chains and a server may run apart: ``entropy_decode`` (rANS(z) -> h_s -> context model -> y_hat per
view, exactly the encoder's on every device, so a CPU copy of the model will do) -> ``GroupLatents`` ->
``synthesize`` (y_hat * y_inverse[q] -> JCT -> synthesis half 1 -> JCT -> synthesis half 2, with the views as a
tensor dimension (B, V, C, H, W) and several groups of one shape on the batch axis B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from compressai.ops import quantize_ste
from torch import Tensor, nn

from mvic.shared.bitstream import ViewBitstream, ViewHeader, padding_for
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
from mvic.shared.codec.images import crop, to_padded_tensor, to_pixels
from mvic.shared.codec.jct import JointContextTransfer
from mvic.shared.codec.transforms import (
    analysis,
    hyper_analysis,
    hyper_synthesis,
    synthesis_first_half,
    synthesis_second_half,
)
from mvic.shared.errors import (
    CorruptBitstreamError,
    DesyncError,
    GroupError,
    ImageError,
    ModelMismatchError,
    WeightsError,
)
from mvic.shared.model_table import MODELS_BY_ID, ContextModel, ModelSpec

@dataclass(frozen=True)
class RDOutput:
    """Forward pass of a batch of view groups."""

    x_hat: Tensor  # (B, V, 3, H, W)
    likelihoods_y: Tensor  # (B, V, M, H/16, W/16)
    likelihoods_z: Tensor  # (B, V, N, H/64, W/64)


@dataclass(frozen=True)
class DecodedView:
    header: ViewHeader
    image: np.ndarray  # (height, width, 3) uint8


@dataclass(frozen=True)
class ExactLatents:
    """What the exact entropy model coded, one row per view: the same numbers on every device."""

    y_hat_fx: Tensor  # (B, M, h, w) exact, units 2**-FRAC_BITS, in the gained domain
    scales: Tensor  # (B, M, h, w) table scales the symbols were coded with
    means: Tensor  # (B, M, h, w)
    z_hat: Tensor  # (B, N, h/4, w/4) dequantized hyper latent (gained domain)


@dataclass(frozen=True)
class GroupLatents:
    """Equal-size views of one group after ``entropy_decode``, ready for ``synthesize`` (maybe on another device).

    The tensors stay where entropy decoding ran (a CPU copy of the model, say); ``synthesize`` moves what it needs.
    """

    headers: tuple[ViewHeader, ...]
    latents: ExactLatents  # one row per view, in the order of ``headers``
    rate_indexes: tuple[int, ...]
    padded_size: tuple[int, int]  # (Hp, Wp), multiples of 64

    @property
    def shape(self) -> tuple[int, tuple[int, int]]:
        """(views, padded size): groups of one shape are synthesized together."""
        return len(self.headers), self.padded_size

    def select(self, rows: Sequence[int]) -> GroupLatents:
        """The same group restricted to some of its views (to synthesize a view alone, say)."""
        rows = list(rows)
        lat = self.latents
        return GroupLatents(tuple(self.headers[i] for i in rows),
                            ExactLatents(lat.y_hat_fx[rows], lat.scales[rows], lat.means[rows], lat.z_hat[rows]),
                            tuple(self.rate_indexes[i] for i in rows), self.padded_size)


class LDMIC(CompressionModel):
    """Variable-rate LDMIC / LDMIC-fast for any number of views."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        n, m = spec.n, spec.m
        self.g_a = analysis(n, m)
        self.h_a = hyper_analysis(n, m)
        self.h_s = hyper_synthesis(n, m)
        self.entropy_bottleneck = EntropyBottleneck(n)
        self.gaussian_conditional = GaussianConditional(None)
        context = CheckerboardContext if spec.context is ContextModel.CHECKERBOARD else AutoregressiveContext
        self.context = context(m)
        self.gains = RateGains(spec.lambdas, n, m)
        self.jct_1 = JointContextTransfer(m)
        self.synthesis_1 = synthesis_first_half(n, m)
        self.jct_2 = JointContextTransfer(n)
        self.synthesis_2 = synthesis_second_half(n)
        self.weights_hash: bytes | None = None  # set by the registry when weights are loaded from a file

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, rate: Tensor) -> RDOutput:
        """x: (B, V, 3, H, W) in [0, 1], H and W multiples of 64; rate: (B,) or (B, V) rate indexes.

        Training mode: noise for the rates, straight-through rounding for the decoder (mixed quantization).
        Eval mode: the exact coding path without the rANS coder, so x_hat is what ``decompress`` will give.
        """
        b, v, _, h, w = x.shape
        if h % 64 or w % 64:
            raise ImageError(f"forward needs H and W multiples of 64, got {h}x{w}; crop or pad the batch")
        rate = self._rates(rate, b, v)  # (B*V,)
        flat = x.reshape(b * v, 3, h, w)  # (B*V, 3, H, W)
        y = _last_in_float32(self.g_a, flat) * RateGains.pick(self.gains.y_gain, rate)  # (B*V, M, h, w), gained
        z = _last_in_float32(self.h_a, y) * RateGains.pick(self.gains.z_gain, rate)  # (B*V, N, h/4, w/4), gained
        if self.training:
            # Under autocast (bf16 training) the entropy model still runs in float32: likelihoods and rounding
            # offsets need the precision; the transforms and the JCT may run in lower precision, except the last
            # convolutions of g_a and h_a, whose outputs are the latents.
            with torch.autocast(flat.device.type, enabled=False):
                y, z = y.float(), z.float()
                _, lik_z = self.entropy_bottleneck(z)
                medians = self.entropy_bottleneck._get_medians().view(1, -1, 1, 1)
                z_hat = quantize_ste(z - medians) + medians
                params = self.h_s(z_hat * RateGains.pick(self.gains.z_inverse, rate))
                scales, means = self.context.train_params(y, params)
                _, lik_y = self.gaussian_conditional(y, scales, means)
                y_hat = quantize_ste(y - means) + means
        else:
            lat = self._code_latents(y, z, rate, CodingSession(b * v), ExactOptions())
            _, lik_z = self.entropy_bottleneck(lat.z_hat, training=False)
            y_hat = from_fixed(lat.y_hat_fx).float()
            lik_y = self._likelihood_y(y_hat, lat)
        x_hat = self._synthesize(y_hat * RateGains.pick(self.gains.y_inverse, rate), b, v)
        return RDOutput(x_hat, lik_y.view(b, v, *lik_y.shape[1:]), lik_z.view(b, v, *lik_z.shape[1:]))

    def _likelihood_y(self, y_hat: Tensor, lat: ExactLatents) -> Tensor:
        gc = self.gaussian_conditional
        lik = gc._likelihood(y_hat, lat.scales.float(), lat.means.float())
        return gc.likelihood_lower_bound(lik) if gc.use_likelihood_bound else lik

    def _synthesize(self, y_hat: Tensor, b: int, v: int) -> Tensor:
        """(B*V, M, h, w) -> (B, V, 3, 16h, 16w), joint over the V views of each group."""
        f = self.jct_1(y_hat.view(b, v, *y_hat.shape[1:]))  # (B, V, M, h, w)
        f = self.synthesis_1(f.flatten(0, 1))  # (B*V, N, 4h, 4w)
        f = self.jct_2(f.view(b, v, *f.shape[1:]))  # (B, V, N, 4h, 4w)
        x_hat = self.synthesis_2(f.flatten(0, 1))  # (B*V, 3, 16h, 16w)
        return x_hat.view(b, v, *x_hat.shape[1:])

    def _rates(self, rate: Tensor | int, b: int, v: int) -> Tensor:
        rate = torch.as_tensor(rate, dtype=torch.long, device=self.gains.y_gain.device)
        if rate.dim() <= 1:
            rate = rate.reshape(-1, 1)
        rate = rate.expand(b, v).reshape(-1)  # (B*V,)
        if int(rate.min()) < 0 or int(rate.max()) >= self.spec.num_rates:
            raise ValueError(f"rate index out of range 0..{self.spec.num_rates - 1}")
        return rate

    # ------------------------------------------------------------------------------------- exact entropy model
    def _gaussian_tables(self) -> GaussianTables:
        gc = self.gaussian_conditional
        return GaussianTables(CdfTable.of(gc), gc.scale_table.double(), float(gc.lower_bound_scale.bound))

    def _code_latents(self, y: Tensor | None, z: Tensor | None, rate: Tensor, session: CodingSession,
                      opts: ExactOptions, y_size: tuple[int, int] | None = None) -> ExactLatents:
        """The one path that encoder, decoder and eval forward share. y, z: gained latents (None to decode)."""
        with exact_mode(rate.device):
            return self._code_latents_exact(y, z, rate, session, opts, y_size)

    def _code_latents_exact(self, y, z, rate, session, opts, y_size) -> ExactLatents:
        eb = self.entropy_bottleneck
        if y is not None:
            y_size = y.shape[-2:]
        h, w = y_size
        b = rate.shape[0]
        n = self.spec.n
        device = rate.device
        medians = eb._get_medians().detach().double().view(1, n, 1, 1)
        z_shape = (b, n, h // 4, w // 4)
        z_idx = torch.arange(n, device=device).view(1, n, 1, 1).expand(z_shape)
        z_sym = session.code(z, medians.expand(z_shape), z_idx, CdfTable.of(eb))  # (B, N, h/4, w/4)
        z_hat_fx = dequantize_fixed(z_sym, to_fixed(medians))
        h_in = round_shift(z_hat_fx * self.gains.z_inverse_fixed(rate), 2.0**-GAIN_BITS)
        params_fx = run_layers(exact_form(self.h_s), h_in.clamp(-ACT_LIMIT, ACT_LIMIT), opts)
        target = y.double() if y is not None else None
        coded = self.context.code(params_fx, target, session, self._gaussian_tables(), opts)
        return ExactLatents(coded.y_hat_fx, coded.scales, coded.means, (z_sym + medians).float())

    # ---------------------------------------------------------------------------------------------- encoder
    @torch.no_grad()
    def compress_view(self, image: np.ndarray, rate_index: int, *, camera_id: str = "cam", sequence: int = 0,
                      capture_ns: int = 0, opts: ExactOptions = ExactOptions()) -> ViewBitstream:
        """Encode one camera view, (H, W, 3) uint8, into a self-describing bitstream. No other view is needed."""
        weights_hash = self._require_weights_hash()
        device = self.gains.y_gain.device
        x = to_padded_tensor(image, device)  # (1, 3, Hp, Wp)
        rate = self._rates(rate_index, 1, 1)  # (1,)
        session = EncodeSession(1)
        y = self.g_a(x) * RateGains.pick(self.gains.y_gain, rate)  # (1, M, Hp/16, Wp/16)
        z = self.h_a(y) * RateGains.pick(self.gains.z_gain, rate)  # (1, N, Hp/64, Wp/64)
        self._code_latents(y, z, rate, session, opts)
        stream = session.finish()[0]
        h, w = image.shape[:2]
        pad_b, pad_r = padding_for(h, w)
        header = ViewHeader(self.spec.model_id, weights_hash, int(rate_index), camera_id, sequence, capture_ns,
                            h, w, pad_b, pad_r, session.symbol_crc(0))
        header.validate()
        return ViewBitstream(header, (stream,))

    # ---------------------------------------------------------------------------------------------- decoder
    @torch.no_grad()
    def decompress(self, views: Sequence[ViewBitstream], opts: ExactOptions = ExactOptions()) -> list[DecodedView]:
        """Decode any number of views of one timestamp jointly; results are in the order given.

        ``entropy_decode`` then ``synthesize``; views of different sizes are decoded in sub-groups of equal size.
        Raises ModelMismatchError for a view coded with another model or other weights, DesyncError (``failed``:
        positions in ``views``) if entropy decoding went wrong for some views.
        """
        if not views:
            raise GroupError("decompress needs at least one view")
        self._check_views(views)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, view in enumerate(views):
            by_size.setdefault(view.header.padded_size, []).append(i)
        latents = []
        for members in by_size.values():
            try:
                latents.append(self.entropy_decode([views[i] for i in members], opts))
            except DesyncError as exc:
                raise DesyncError(str(exc), [members[i] for i in exc.failed]) from None
        out: list[DecodedView | None] = [None] * len(views)
        for members, decoded in zip(by_size.values(), self.synthesize(latents)):
            for i, view in zip(members, decoded):
                out[i] = view
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def entropy_decode(self, views: Sequence[ViewBitstream], opts: ExactOptions = ExactOptions()) -> GroupLatents:
        """Decoder stage 1, for equal-size views of one group: rANS + the exact hyper and context networks.

        Runs on this model's device. The integers are the same on every device, so a CPU copy of the model (same
        weights) may do this for a model that synthesizes on the GPU. Raises GroupError (no views, sizes differ),
        ModelMismatchError, CorruptBitstreamError, DesyncError (``failed``: positions in ``views``).
        """
        if not views:
            raise GroupError("entropy_decode needs at least one view")
        self._check_views(views)
        sizes = sorted({v.header.padded_size for v in views})
        if len(sizes) > 1:
            raise GroupError(f"entropy_decode needs views of one padded size, got {sizes}; decompress splits them")
        lat = self._decode_latents(views, opts)
        return GroupLatents(tuple(v.header for v in views), lat, tuple(v.header.rate_index for v in views), sizes[0])

    @torch.no_grad()
    def synthesize(self, batch: Sequence[GroupLatents]) -> list[list[DecodedView]]:
        """Decoder stage 2: joint synthesis (JCT + g_s) of several groups on this model's device.

        Groups of one shape (number of views, padded size) are stacked on the batch axis B and synthesized in one
        pass; groups of different shapes in separate passes. One list of views per group, in the order given.
        """
        by_shape: dict[tuple[int, tuple[int, int]], list[int]] = {}
        for i, group in enumerate(batch):
            for header in group.headers:
                self._check_compatible(header)
            by_shape.setdefault(group.shape, []).append(i)
        out: list[list[DecodedView]] = [[] for _ in batch]
        for members in by_shape.values():
            for i, views in zip(members, self._synthesize_groups([batch[i] for i in members])):
                out[i] = views
        return out

    def _synthesize_groups(self, groups: Sequence[GroupLatents]) -> list[list[DecodedView]]:
        """Groups of one shape in one pass; the one device -> host copy is the finished uint8 batch."""
        device = self.gains.y_inverse.device
        b, v = len(groups), len(groups[0].headers)
        y_fx = [from_fixed(g.latents.y_hat_fx).float() for g in groups]  # B x (V, M, h, w), exact in float32
        y_hat = torch.cat([_to_device(y, device) for y in y_fx])  # (B*V, M, h, w)
        rate = _to_device(torch.tensor([q for g in groups for q in g.rate_indexes]), device)  # (B*V,)
        x_hat = self._synthesize(y_hat * RateGains.pick(self.gains.y_inverse, rate), b, v)  # (B, V, 3, Hp, Wp)
        pixels = to_pixels(x_hat)  # (B, V, Hp, Wp, 3) uint8 on the host
        return [[DecodedView(h, crop(pixels[i, j], h.height, h.width)) for j, h in enumerate(g.headers)]
                for i, g in enumerate(groups)]

    def decode_latents(self, views: Sequence[ViewBitstream], opts: ExactOptions = ExactOptions()) -> Tensor:
        """Entropy-decode equal-size views: (V, M, h, w) exact latents in units 2**-FRAC_BITS (for tests/tools)."""
        with torch.no_grad():
            return self._decode_latents(views, opts).y_hat_fx

    def _decode_latents(self, views: Sequence[ViewBitstream], opts: ExactOptions) -> ExactLatents:
        device = self.gains.y_gain.device
        hp, wp = views[0].header.padded_size
        rate = torch.tensor([v.header.rate_index for v in views], device=device)
        session = DecodeSession([v.streams[0] for v in views])
        lat = self._code_latents(None, None, rate, session, opts, (hp // 16, wp // 16))
        bad = [i for i, v in enumerate(views) if session.symbol_crc(i) != v.header.symbol_crc]
        if bad:
            names = ", ".join(f"{views[i].header.camera_id}#{views[i].header.sequence}" for i in bad)
            raise DesyncError(
                f"entropy decoding desynchronised for {names}: the decoded latent symbols differ from the encoder's "
                "(checksum mismatch). The encoder and decoder disagree on the model; decode these views again "
                "with the weights they were encoded with, or drop them and decode the rest",
                bad,
            )
        return lat

    # ------------------------------------------------------------------------------------------- identity
    def _require_weights_hash(self) -> bytes:
        if self.weights_hash is None:
            raise WeightsError(
                "this model has no weights identity to put in the bitstream; load it with "
                "mvic.shared.codec.registry.load_model(...) or export it with registry.export_weights(...) first"
            )
        return self.weights_hash

    def _check_views(self, views: Sequence[ViewBitstream]) -> None:
        for view in views:
            self._check_compatible(view.header)
            if len(view.streams) != 1:
                raise CorruptBitstreamError(
                    f"view {view.header.camera_id}#{view.header.sequence} holds {len(view.streams)} streams; "
                    "this model codes one per view"
                )

    def _check_compatible(self, header: ViewHeader) -> None:
        who = f"view {header.camera_id}#{header.sequence}"
        if header.model_id != self.spec.model_id:
            other = MODELS_BY_ID.get(header.model_id)
            name = other.name if other else f"unknown id {header.model_id:#06x}"
            raise ModelMismatchError(
                f"{who} was coded with model {name!r} but this decoder holds {self.spec.name!r}; "
                f"start the decoder with --model {name}" if other else
                f"{who} names {name}, which this build does not know; upgrade MVIC on the decoder"
            )
        if header.weights_hash != self._require_weights_hash():
            raise ModelMismatchError(
                f"{who} was coded with weights {header.weights_hash.hex()} but the decoder holds "
                f"{self.weights_hash.hex()}; load the same weights file on both ends (mvic-codec info shows the hash)"
            )
        if header.rate_index >= self.spec.num_rates:
            raise CorruptBitstreamError(
                f"{who} asks for rate point {header.rate_index}; model {self.spec.name!r} has {self.spec.num_rates}"
            )


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Host -> GPU without waiting for the GPU (pinned, non-blocking); a no-op when t is there already."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _last_in_float32(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``seq(x)`` with its last layer in float32, outside any autocast: under bf16 autocast the latents would
    otherwise be rounded to 8 significant bits before the entropy model sees them."""
    hidden = seq[:-1](x)
    with torch.autocast(x.device.type, enabled=False):
        return seq[-1](hidden.float())
