"""LDMIC assembled: per-view encoder, latent codec, joint decoder. The codec's public API.

Hop before: a camera frame, (H, W, 3) uint8 (``mvic.node`` capture, or a file for ``mvic-codec``).
Hop after: ``compress_view`` -> ``ViewBitstream`` -> ``mvic.shared.bitstream.pack`` -> gRPC / file;
``decompress(views)`` -> ``DecodedView`` images for the sinks.

Encoder, one view, on the camera's CPU::

    x (1, 3, Hp, Wp) ──g_a, * y_gain[q]──▶ y (1, M, Hp/16, Wp/16) ──latent_codec.encode──▶ rANS(z), rANS(y)
      ──▶ ViewBitstream (header + one stream)

Decoder, any K >= 1 views of one group, in two stages::

    entropy_decode   K views ──latent_codec.decode──▶ GroupLatents: y_hat (K, M, h, w), exact integers, so a CPU
                     copy of the model gives the encoder's very numbers whatever device synthesizes
    synthesize       y_hat * y_inverse[q], (B, V, M, h, w) ──JCT──▶ synthesis half 1 ──JCT──▶ synthesis half 2
                     ──▶ x_hat (B, V, 3, Hp, Wp) ──crop──▶ one DecodedView per view; groups of one shape share B

``decompress`` chains the two decoder stages; a server may run them apart (``fusion_server.decoder``). Training
(``forward``) takes (B, V, 3, H, W) batches through the same modules. The parts: transforms.py (g_a, h_a, h_s, the
synthesis halves), latent_codec.py (hyperprior + context model; context.py), gains.py (rate gains), jct.py (joint
context transfer), compat.py (which views this model may decode), records.py (what comes out).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mvic.shared.bitstream import ViewBitstream, ViewHeader, padding_for
from mvic.shared.codec._compressai import CompressionModel, EntropyBottleneck, GaussianConditional
from mvic.shared.codec.compat import CodecIdentity, check_compatible
from mvic.shared.codec.context import AutoregressiveContext, CheckerboardContext
from mvic.shared.codec.entropy_coding import DecodeSession, EncodeSession
from mvic.shared.codec.fixedpoint import ExactOptions, from_fixed
from mvic.shared.codec.gains import RateGains
from mvic.shared.codec.images import crop, to_padded_tensor, to_pixels
from mvic.shared.codec.jct import JointContextTransfer
from mvic.shared.codec.latent_codec import ExactLatents, HyperpriorLatentCodec, StreamFloor
from mvic.shared.codec.records import DecodedView, GroupLatents, RDOutput
from mvic.shared.codec.transforms import (
    analysis,
    hyper_analysis,
    hyper_synthesis,
    last_in_float32,
    synthesis_first_half,
    synthesis_second_half,
)
from mvic.shared.errors import CorruptBitstreamError, DesyncError, GroupError, ImageError, WeightsError
from mvic.shared.model_table import ContextModel, ModelSpec

__all__ = ["LDMIC", "DecodedView", "ExactLatents", "GroupLatents", "RDOutput"]


class LDMIC(CompressionModel):
    """Variable-rate LDMIC / LDMIC-fast for any number of views."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        n, m = spec.n, spec.m
        # The attribute names are the state_dict keys of every weights file: never rename them.
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

    @property
    def latent_codec(self) -> HyperpriorLatentCodec:
        """The entropy model of y over this model's own modules (it owns none, so the state_dict keys stay)."""
        return HyperpriorLatentCodec(self.h_a, self.h_s, self.entropy_bottleneck, self.gaussian_conditional,
                                     self.context, self.gains)

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
        y = last_in_float32(self.g_a, flat) * RateGains.pick(self.gains.y_gain, rate)  # (B*V, M, h, w), gained
        lat = self.latent_codec.forward(y, rate, training=self.training)  # y_hat (B*V, M, h, w)
        x_hat = self._synthesize(lat.y_hat * RateGains.pick(self.gains.y_inverse, rate), b, v)  # (B, V, 3, H, W)
        lik_y = lat.likelihoods_y.view(b, v, *lat.likelihoods_y.shape[1:])  # (B, V, M, h, w)
        lik_z = lat.likelihoods_z.view(b, v, *lat.likelihoods_z.shape[1:])  # (B, V, N, h/4, w/4)
        return RDOutput(x_hat, lik_y, lik_z)

    def _synthesize(self, y_hat: Tensor, b: int, v: int) -> Tensor:
        """(B*V, M, h, w) -> (B, V, 3, 16h, 16w), joint over the V views of each group."""
        f = self.jct_1(y_hat.view(b, v, *y_hat.shape[1:]))  # (B, V, M, h, w)
        f = self.synthesis_1(f.flatten(0, 1))  # (B*V, N, 4h, 4w)
        f = self.jct_2(f.view(b, v, *f.shape[1:]))  # (B, V, N, 4h, 4w)
        x_hat = self.synthesis_2(f.flatten(0, 1))  # (B*V, 3, 16h, 16w)
        return x_hat.view(b, v, *x_hat.shape[1:])  # (B, V, 3, 16h, 16w)

    def _rates(self, rate: Tensor | int, b: int, v: int) -> Tensor:
        rate = torch.as_tensor(rate, dtype=torch.long, device=self.gains.y_gain.device)
        if rate.dim() <= 1:
            rate = rate.reshape(-1, 1)  # (B, 1)
        rate = rate.expand(b, v).reshape(-1)  # (B*V,)
        if int(rate.min()) < 0 or int(rate.max()) >= self.spec.num_rates:
            raise ValueError(f"rate index out of range 0..{self.spec.num_rates - 1}")
        return rate

    # ---------------------------------------------------------------------------------------------- encoder
    @torch.no_grad()
    def compress_view(self, image: np.ndarray, rate_index: int, *, camera_id: str = "cam", sequence: int = 0,
                      capture_ns: int = 0, opts: ExactOptions = ExactOptions()) -> ViewBitstream:
        """Encode one camera view, (H, W, 3) uint8, into a self-describing bitstream. No other view is needed."""
        weights_hash = self._require_weights_hash()
        device = self.gains.y_gain.device
        x = to_padded_tensor(image, device)  # (1, 3, Hp, Wp)
        rate = self._rates(rate_index, 1, 1)  # (1,)
        y = self.g_a(x) * RateGains.pick(self.gains.y_gain, rate)  # (1, M, Hp/16, Wp/16), gained
        session = EncodeSession(1)
        self.latent_codec.encode(y, rate, session, opts)
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
                self.check_header(header)
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

    def min_stream_bytes(self, padded_size: tuple[int, int], floor: StreamFloor | None = None) -> int:
        """The fewest bytes an entropy-coded stream of a view of ``padded_size`` (Hp, Wp) can have with this model's
        tables: a shorter one is damaged or hostile, and can be refused before any decoding (``StreamFloor``).
        ``floor``: ``self.latent_codec.stream_floor()``, for a caller that checks many views with one model."""
        hp, wp = padded_size
        return (floor or self.latent_codec.stream_floor()).min_bytes((hp // 16, wp // 16))  # y: (Hp/16, Wp/16)

    def decode_latents(self, views: Sequence[ViewBitstream], opts: ExactOptions = ExactOptions()) -> Tensor:
        """Entropy-decode equal-size views: (V, M, h, w) exact latents in units 2**-FRAC_BITS (for tests/tools)."""
        with torch.no_grad():
            return self._decode_latents(views, opts).y_hat_fx

    def _decode_latents(self, views: Sequence[ViewBitstream], opts: ExactOptions) -> ExactLatents:
        device = self.gains.y_gain.device
        hp, wp = views[0].header.padded_size
        rate = torch.tensor([v.header.rate_index for v in views], device=device)  # (V,)
        session = DecodeSession([v.streams[0] for v in views])
        lat = self.latent_codec.decode(rate, session, (hp // 16, wp // 16), opts)
        bad = [i for i, v in enumerate(views)
               if not session.intact(i) or session.symbol_crc(i) != v.header.symbol_crc]
        if bad:
            names = ", ".join(f"{views[i].header.camera_id}#{views[i].header.sequence}" for i in bad)
            raise DesyncError(
                f"entropy decoding desynchronised for {names}: the decoded latent symbols differ from the encoder's "
                "(checksum mismatch). Either the stream was damaged (in memory or on a path the packet CRC does not "
                "cover: fetch or re-encode these views), or the encoder and decoder compute differently with the "
                "same model id and weights hash (decode with the weights file the views were encoded with, on the "
                "same MVIC release). The other views are not affected: drop these and decode the rest",
                bad,
            )
        return lat

    # ------------------------------------------------------------------------------------------- identity
    @property
    def identity(self) -> CodecIdentity:
        """The model id and weights hash this model writes into every header (WeightsError before loading)."""
        return CodecIdentity(self.spec.model_id, self._require_weights_hash())

    def _require_weights_hash(self) -> bytes:
        if self.weights_hash is None:
            raise WeightsError(
                "this model has no weights identity to put in the bitstream; load it with "
                "mvic.shared.codec.registry.load_model(...) or export it with registry.export_weights(...) first"
            )
        return self.weights_hash

    def _check_views(self, views: Sequence[ViewBitstream]) -> None:
        for view in views:
            self.check_header(view.header)
            if len(view.streams) != 1:
                raise CorruptBitstreamError(
                    f"view {view.header.camera_id}#{view.header.sequence} holds {len(view.streams)} streams; "
                    "this model codes one per view"
                )

    def check_header(self, header: ViewHeader, *, decoded_by: str = "this decoder") -> None:
        """ModelMismatchError unless this model decodes the view (the ``compat`` rule; ``decoded_by`` names this
        side in the message); CorruptBitstreamError for a rate point the model does not have."""
        who = f"view {header.camera_id}#{header.sequence}"
        check_compatible(CodecIdentity.of(header), self.identity, coded_by=who, decoded_by=decoded_by)
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
