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
                     ──view_fusion (host, per group)──▶ each view with what its partners' aligned views lend it

``decompress`` chains the two decoder stages; a server may run them apart (``fusion_server.decoder``). Training
(``forward``) takes (B, V, 3, H, W) batches through the same modules; a decoder may synthesize with a bf16 copy of
them instead (fast_synthesis.py: only the entropy model must be exact). The parts: transforms.py (g_a, h_a, h_s, the
synthesis halves), latent_codec.py (hyperprior + context model; context.py), gains.py (rate gains), jct.py (joint
context transfer), compat.py (which views this model may decode), records.py (what comes out).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from itertools import pairwise
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mvic.shared.bitstream import ViewBitstream, ViewHeader, padding_for
from mvic.shared.codec._compressai import CompressionModel, EntropyBottleneck, GaussianConditional
from mvic.shared.codec.compat import CodecIdentity, check_compatible
from mvic.shared.codec.context import AutoregressiveContext, CheckerboardContext
from mvic.shared.codec.entropy_coding import DecodeSession, EncodeSession
from mvic.shared.codec.fast_synthesis import OUTPUT_SHIFT, bf16_synthesis, synthesis_precision
from mvic.shared.codec.fixedpoint import Backend, ExactOptions, from_fixed
from mvic.shared.codec.gains import RateGains
from mvic.shared.codec.images import crop, to_padded_tensor, to_pixels
from mvic.shared.codec.jct import JointContextTransfer
from mvic.shared.codec.latent_codec import ExactLatents, HyperpriorLatentCodec, StreamFloor
from mvic.shared.codec.records import DecodedView, GroupLatents, RDOutput
from mvic.shared.codec.refine_head import RefineHead
from mvic.shared.codec.transforms import (
    Precision,
    analysis,
    encoder_form,
    hyper_analysis,
    hyper_synthesis,
    last_in_float32,
    synthesis_first_half,
    synthesis_second_half,
)
from mvic.shared.codec.view_fusion import FusionOptions, fuse_views
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
        self.refine_head = RefineHead(n, spec.refine) if spec.refine else None  # decoder only (refine_head.py)
        self.weights_hash: bytes | None = None  # set by the registry when weights are loaded from a file

    @property
    def latent_codec(self) -> HyperpriorLatentCodec:
        """The entropy model of y over this model's own modules (it owns none, so the state_dict keys stay)."""
        return HyperpriorLatentCodec(self.h_a, self.h_s, self.entropy_bottleneck, self.gaussian_conditional,
                                     self.context, self.gains)

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, rate: Tensor, *, synthesize: bool = True) -> RDOutput:
        """x: (B, V, 3, H, W) in [0, 1], H and W multiples of 64; rate: (B,) or (B, V) rate indexes.

        Training mode: noise for the rates, straight-through rounding for the decoder (mixed quantization).
        Eval mode: the exact coding path without the rANS coder, so x_hat is what ``decompress`` will give.
        ``synthesize=False`` stops after the entropy model (x_hat is None): the rates alone, for training that
        updates only the entropy model.
        """
        b, v, _, h, w = x.shape
        if h % 64 or w % 64:
            raise ImageError(f"forward needs H and W multiples of 64, got {h}x{w}; crop or pad the batch")
        rate = self._rates(rate, b, v)  # (B*V,)
        flat = x.reshape(b * v, 3, h, w)  # (B*V, 3, H, W)
        y = last_in_float32(self.g_a, flat) * RateGains.pick(self.gains.y_gain, rate)  # (B*V, M, h, w), gained
        lat = self.latent_codec.forward(y, rate, training=self.training)  # y_hat (B*V, M, h, w)
        x_hat = None
        if synthesize:
            x_hat = self._synthesize(lat.y_hat * RateGains.pick(self.gains.y_inverse, rate), b, v)  # (B, V, 3, H, W)
        lik_y = lat.likelihoods_y.view(b, v, *lat.likelihoods_y.shape[1:])  # (B, V, M, h, w)
        lik_z = lat.likelihoods_z.view(b, v, *lat.likelihoods_z.shape[1:])  # (B, V, N, h/4, w/4)
        return RDOutput(x_hat, lik_y, lik_z)

    def _synthesize(self, y_hat: Tensor, b: int, v: int, precision: Precision = Precision.FP32) -> Tensor:
        """(B*V, M, h, w) -> (B, V, 3, 16h, 16w), joint over the V views of each group. ``precision``: FP32 runs the
        modules as trained, BF16 their bf16 channels-last copy (fast_synthesis.py); float32 out either way."""
        modules = (self.jct_1, self.synthesis_1, self.jct_2, self.synthesis_2)
        if self.refine_head is not None:
            modules += (self.refine_head,)
        low = precision is Precision.BF16
        if low:
            modules = bf16_synthesis(modules)
            y_hat = y_hat.to(torch.bfloat16, memory_format=torch.channels_last)  # (B*V, M, h, w)
        jct_1, synthesis_1, jct_2, synthesis_2, *head = modules
        f = jct_1(y_hat.view(b, v, *y_hat.shape[1:]))  # (B, V, M, h, w)
        f = synthesis_1(f.flatten(0, 1))  # (B*V, N, 4h, 4w)
        f = jct_2(f.view(b, v, *f.shape[1:]))  # (B, V, N, 4h, 4w)
        f = synthesis_2[:-1](f.flatten(0, 1))  # (B*V, N, 8h, 8w)
        x_hat = synthesis_2[-1](f)  # (B*V, 3, 16h, 16w)
        if low:
            x_hat = x_hat.float().add_(OUTPUT_SHIFT)  # the copy's last layer is shifted by -0.5
        if head:
            x_hat = x_hat + head[0](f).float()  # the refinement head's correction (refine_head.py)
        x_hat = x_hat.contiguous()
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
                      capture_ns: int = 0, opts: ExactOptions = ExactOptions(Backend.TAPS),
                      precision: Precision | str | None = None) -> ViewBitstream:
        """Encode one camera view, (H, W, 3) uint8, into a self-describing bitstream. No other view is needed.

        ``precision``: None runs g_a and h_a as trained, so the latents are those of the eval-mode ``forward``; a
        ``transforms.Precision`` runs their fast encoder form (AUTO: bf16 where this CPU has it natively; the node's
        default). Any choice decodes exactly: it only moves the latents, and so the rate and quality, very slightly.
        ``opts``: how the exact networks are evaluated (the same integers whatever it is; TAPS is the fast one)."""
        weights_hash = self._require_weights_hash()
        device = self.gains.y_gain.device
        x = to_padded_tensor(image, device)  # (1, 3, Hp, Wp)
        rate = self._rates(rate_index, 1, 1)  # (1,)
        g_a = self.g_a if precision is None else encoder_form(self.g_a, precision)
        y = g_a(x) * RateGains.pick(self.gains.y_gain, rate)  # (1, M, Hp/16, Wp/16), gained
        session = EncodeSession(1)
        self.latent_codec.encode(y, rate, session, opts, precision)
        stream = session.finish()[0]
        h, w = image.shape[:2]
        pad_b, pad_r = padding_for(h, w)
        header = ViewHeader(self.spec.model_id, weights_hash, int(rate_index), camera_id, sequence, capture_ns,
                            h, w, pad_b, pad_r, session.symbol_crc(0))
        header.validate()
        return ViewBitstream(header, (stream,))

    # ---------------------------------------------------------------------------------------------- decoder
    @torch.no_grad()
    def decompress(self, views: Sequence[ViewBitstream], opts: ExactOptions | None = None, *,
                   precision: Precision | str = Precision.FP32, threads: int = 1,
                   fusion: FusionOptions = FusionOptions()) -> list[DecodedView]:
        """Decode any number of views of one timestamp jointly; results are in the order given.

        ``entropy_decode`` (on ``threads`` threads) then ``synthesize`` (in ``precision``, then ``fusion``); views of
        different sizes are decoded in sub-groups of equal size. Raises ModelMismatchError for a view coded with
        another model or other weights, DesyncError (``failed``: positions in ``views``) if entropy decoding went
        wrong for some views.
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
                latents.append(self.entropy_decode([views[i] for i in members], opts, threads=threads))
            except DesyncError as exc:
                raise DesyncError(str(exc), [members[i] for i in exc.failed]) from None
        out: list[DecodedView | None] = [None] * len(views)
        for members, decoded in zip(by_size.values(), self.synthesize(latents, precision, fusion)):
            for i, view in zip(members, decoded):
                out[i] = view
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def entropy_decode(self, views: Sequence[ViewBitstream], opts: ExactOptions | None = None, *,
                       threads: int = 1) -> GroupLatents:
        """Decoder stage 1, for equal-size views of one group: rANS + the exact hyper and context networks.

        Runs on this model's device. The integers are the same on every device, so a CPU copy of the model (same
        weights) may do this for a model that synthesizes on the GPU. ``threads`` > 1 shares the views out among
        that many threads (every view is coded alone, and the rANS loop and torch release the GIL): the same
        integers, spread over the cores; give torch cores / threads intra-op threads so they are not oversubscribed.
        ``opts``: how the exact networks are evaluated (``decode_options``: the fast backend for torch's thread count).
        Raises GroupError (no views, sizes differ), ModelMismatchError, CorruptBitstreamError, DesyncError
        (``failed``: positions in ``views``).
        """
        if not views:
            raise GroupError("entropy_decode needs at least one view")
        self._check_views(views)
        sizes = sorted({v.header.padded_size for v in views})
        if len(sizes) > 1:
            raise GroupError(f"entropy_decode needs views of one padded size, got {sizes}; decompress splits them")
        lat = self._decode_latents(views, opts, threads)
        return GroupLatents(tuple(v.header for v in views), lat, tuple(v.header.rate_index for v in views), sizes[0],
                            tuple(v.payload_bytes for v in views))

    @torch.no_grad()
    def synthesize(self, batch: Sequence[GroupLatents], precision: Precision | str = Precision.FP32,
                   fusion: FusionOptions = FusionOptions()) -> list[list[DecodedView]]:
        """Decoder stage 2: joint synthesis (JCT + g_s) of several groups on this model's device, then the view
        fusion of each group's images on the host (``view_fusion``; ``NO_FUSION`` skips it).

        Groups of one shape (number of views, padded size) are stacked on the batch axis B and synthesized in one
        pass; groups of different shapes in separate passes. One list of views per group, in the order given.
        ``precision`` (``fast_synthesis.synthesis_precision``): FP32 = the modules as trained; BF16 = a bf16
        channels-last copy, 3-4x faster on a CPU with native bf16; AUTO = BF16 there, FP32 elsewhere.
        """
        precision = synthesis_precision(precision, self.gains.y_inverse.device)
        by_shape: dict[tuple[int, tuple[int, int]], list[int]] = {}
        for i, group in enumerate(batch):
            for header in group.headers:
                self.check_header(header)
            by_shape.setdefault(group.shape, []).append(i)
        out: list[list[DecodedView]] = [[] for _ in batch]
        for members in by_shape.values():
            for i, views in zip(members, self._synthesize_groups([batch[i] for i in members], precision)):
                out[i] = _fused(views, batch[i].bpp, fusion)
        return out

    def _synthesize_groups(self, groups: Sequence[GroupLatents], precision: Precision) -> list[list[DecodedView]]:
        """Groups of one shape in one pass; the one device -> host copy is the finished uint8 batch."""
        device = self.gains.y_inverse.device
        b, v = len(groups), len(groups[0].headers)
        y_fx = [from_fixed(g.latents.y_hat_fx).float() for g in groups]  # B x (V, M, h, w), exact in float32
        y_hat = torch.cat([_to_device(y, device) for y in y_fx])  # (B*V, M, h, w)
        rate = _to_device(torch.tensor([q for g in groups for q in g.rate_indexes]), device)  # (B*V,)
        x_hat = self._synthesize(y_hat * RateGains.pick(self.gains.y_inverse, rate), b, v, precision)  # (B,V,3,Hp,Wp)
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

    def _decode_latents(self, views: Sequence[ViewBitstream], opts: ExactOptions | None,
                        threads: int = 1) -> ExactLatents:
        """The views in ``threads`` consecutive shares, each decoded on its own thread (one share: this thread)."""
        opts = opts or decode_options()
        hp, wp = views[0].header.padded_size
        n = max(1, min(threads, len(views)))
        bounds = [i * len(views) // n for i in range(n + 1)]
        shares = [views[a:b] for a, b in pairwise(bounds)]
        sessions = [DecodeSession([v.streams[0] for v in share]) for share in shares]  # a malformed stream: raises

        def decode(share: Sequence[ViewBitstream], session: DecodeSession) -> ExactLatents | DesyncError:
            rate = torch.tensor([v.header.rate_index for v in share], device=self.gains.y_gain.device)  # (V_share,)
            try:
                return self.latent_codec.decode(rate, session, (hp // 16, wp // 16), opts)
            except DesyncError as exc:  # every stream of the share failed: its views are named below
                if n == 1:
                    raise
                return exc

        if n == 1:
            done = [decode(shares[0], sessions[0])]
        else:
            with ThreadPoolExecutor(n, thread_name_prefix="mvic-entropy-share") as pool:
                done = list(pool.map(decode, shares, sessions))
        if all(isinstance(d, DesyncError) for d in done):
            raise DesyncError(str(done[0]), list(range(len(views))))
        bad = [a + i for a, share, session, d in zip(bounds, shares, sessions, done) for i, v in enumerate(share)
               if isinstance(d, DesyncError) or not session.intact(i) or session.symbol_crc(i) != v.header.symbol_crc]
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
        if n == 1:
            return done[0]
        return ExactLatents(*(torch.cat([getattr(d, f.name) for d in done]) for f in fields(ExactLatents)))

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


def decode_options() -> ExactOptions:
    """The exact backend for decoding: every one gives the same integers; the fastest depends on torch's threads.
    ``Backend.TAPS`` (cache-sized float64 GEMMs, the camera's) on one intra-op thread, ~2x faster there than torch's
    convolution; with more, torch's convolution, as TAPS's many small GEMMs each wait for a whole OpenMP team (2.5x
    slower than it at two threads on a busy two-core CPU: benchmarks/results-fast-decode-cpu.md)."""
    return ExactOptions(Backend.TAPS) if torch.get_num_threads() == 1 else ExactOptions()


def _fused(views: list[DecodedView], bpp: Sequence[float], fusion: FusionOptions) -> list[DecodedView]:
    """The group's views after ``fuse_views``, among views of one image size (a padded size holds several)."""
    if len(views) < 2 or not fusion.enabled:
        return views
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, view in enumerate(views):
        by_shape.setdefault(view.image.shape, []).append(i)
    out = list(views)
    for members in by_shape.values():
        h, w = views[members[0]].image.shape[:2]
        ground = None if fusion.rig is None else [fusion.rig.ground(views[i].header.camera_id, h, w) for i in members]
        images = fuse_views([views[i].image for i in members], [bpp[i] for i in members], fusion, ground=ground)
        for i, image in zip(members, images):
            out[i] = DecodedView(views[i].header, image)
    return out


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Host -> GPU without waiting for the GPU (pinned, non-blocking); a no-op when t is there already."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
