"""Flow-guided view fusion: the joint decoder's last step, where the views of a group lend each other detail.

Hop before: ``LDMIC.synthesize`` (JCT + g_s) gives each view of a group its reconstruction, (H, W, 3) uint8.
Hop after: the ``DecodedView`` images the sinks write.

Every camera codes its view alone, so the views of a group carry independent coding errors of whatever they show in
common. The decoder sees them all: for each view i and each partner view j it aligns j to i as a whole (a
homography fitted to matched ORB features with RANSAC), estimates what is left as a dense optical flow (DIS, Kroeger
et al. 2016; OpenCV) and the same for the way back, warps j's reconstruction onto i (bicubic), matches its colours
to i's where they agree (cameras differ in exposure and white balance), and averages it into i where they agree::

    w_j(p) = consistent_j(p) * exp(-d_j(p) / t_i)          d_j: local mean of |blur(x_i) - blur(warp_j(x_j))|^2
    out_i  = (x_i + sum_j w_j warp_j(x_j)) / (1 + sum_j w_j)

``consistent`` keeps pixels whose forward and backward flows agree within ``max_flow_error`` pixels and that land
inside view j; ``t_i = agreement * bpp_i ** -exponent`` follows view i's rate, so a partner must agree about as
well as two codings of the same content at that rate do, and a view without a true partner (no overlap, another
scene, a moving object) comes out as it went in. This is classical signal processing, not learned: the JCT's
learned attention pools each view's context over the whole image and cannot align what the views share; the flow
can (benchmarks/results-view-fusion.md has the measurements that chose the defaults).

A calibrated rig (``ground``: each view's ground-plane -> pixel homography, from ``mvic.shared.rig``) adds a second
alignment for each pair: the ground plane that both cameras see, mapped exactly from one view to the other and
refined by DIS like the first. Wide baselines around a square defeat the feature homography (it fits one plane of
many, or none); the ground is where most shared pixels lie. Each pixel takes whichever alignment agrees better
there, so walls and people keep the first and the ground the second.

The result is a deterministic function of the decoded images and the views' sizes in bits. Another synthesis of the
same bitstreams (another device, bf16) differs by a grey level or so, and where that tips a flow, a few fused pixels
differ by more; the quality does not move (tests/shared/codec/test_fast_decode.py compares it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import cv2
import numpy as np

from mvic.shared.rig import Rig, sees_shared_ground

__all__ = ["Alignment", "FusionOptions", "NO_FUSION", "fuse_views"]


@dataclass(frozen=True)
class FusionOptions:
    """How the joint decoder fuses a group's views (``enabled=False``: not at all; JCT + g_s alone)."""

    enabled: bool = True
    agreement: float = 7e-4  # t_i = agreement * bpp_i ** -exponent: how far a partner may differ and still count
    exponent: float = 0.9
    window: int = 7  # side of the box over which the disagreement d_j is averaged, pixels
    blur: float = 2.0  # Gaussian sigma applied before comparing (the colour of a region, not its noise), pixels
    max_flow_error: float = 1.0  # forward-backward flow mismatch above which a pixel has no partner, pixels
    min_overlap: float = 0.02  # partners consistent on less of the view than this are ignored
    max_side: int = 1024  # flows are estimated on images whose long side is at most this (then scaled up)
    max_partners: int = 3  # partners per view: its neighbours in the group's order, nearest first
    rig: Rig | None = None  # the cameras' calibration: pairs of calibrated views also try the ground's alignment

    def __post_init__(self):
        checks = {
            "agreement": self.agreement > 0, "exponent": self.exponent >= 0, "window": self.window >= 1,
            "blur": self.blur >= 0, "max_flow_error": self.max_flow_error > 0,
            "min_overlap": 0 <= self.min_overlap <= 1, "max_side": self.max_side >= 32,
            "max_partners": self.max_partners >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"FusionOptions: invalid {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}")


NO_FUSION = FusionOptions(enabled=False)


class Alignment(Protocol):
    """Where the pixels of one view lie in another: ``pair(i, j)`` -> (H, W, 2) float32 offsets, full-size pixels."""

    def pair(self, i: int, j: int) -> np.ndarray: ...


def fuse_views(images: Sequence[np.ndarray], bpp: Sequence[float], opts: FusionOptions = FusionOptions(),
               *, alignment: Alignment | None = None,
               ground: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
    """Fuse the reconstructions of one group's views, (H, W, 3) uint8 each, all of one size; ``bpp``: each view's
    coded size in bits per pixel. Returns new images in the same order; one view (or fusion off) comes back as is.
    ``ground``: each view's (3, 3) ground-plane -> pixel homography at this image size, None for a view without
    calibration (``mvic.shared.rig.Rig.ground``); pairs of calibrated views also try the ground's alignment.
    ``alignment`` replaces the estimated flows (benchmarks/view_fusion.py passes a rendered scene's true geometry,
    to tell what better alignment could gain)."""
    if len(images) != len(bpp):
        raise ValueError(f"fuse_views: {len(images)} images but {len(bpp)} rates")
    shapes = {im.shape for im in images}
    if len(shapes) > 1 or any(im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3 for im in images):
        raise ValueError(f"fuse_views needs (H, W, 3) uint8 images of one size, got {sorted(shapes)}")
    if ground is not None and (len(ground) != len(images) or any(
            g is not None and (np.shape(g) != (3, 3) or not np.isfinite(g).all()) for g in ground)):
        raise ValueError(f"fuse_views: ground needs one finite (3, 3) homography or None per view, got {len(ground)}")
    if len(images) < 2 or not opts.enabled:
        return list(images)
    if alignment is not None:
        candidates = lambda i, j: [alignment.pair(i, j)]  # noqa: E731
    else:
        candidates = _Flows(images, opts.max_side, ground).pairs
    out = []
    for i, image in enumerate(images):
        own = image.astype(np.float32) / 255  # (H, W, 3) in [0, 1]; one view and one partner in float at a time
        limit = opts.agreement * max(float(bpp[i]), 1e-3) ** -opts.exponent
        total, weight = own.copy(), np.ones(own.shape[:2], np.float32)  # (H, W, 3), (H, W)
        for j in _partners(i, len(images), opts.max_partners):
            other = images[j].astype(np.float32) / 255
            best = None  # per pixel, the alignment that agrees best: (warped, weight)
            for there, back in zip(candidates(i, j), candidates(j, i)):
                lent = _lend(own, other, there, back, limit, opts)
                if lent is None:
                    continue
                if best is None:
                    best = lent
                else:
                    better = lent[1] > best[1]
                    best = (np.where(better[..., None], lent[0], best[0]), np.maximum(lent[1], best[1]))
            if best is not None:
                total += best[1][..., None] * best[0]
                weight += best[1]
        out.append(np.rint(np.clip(total / weight[..., None], 0, 1) * 255).astype(np.uint8))
    return out


def _partners(i: int, k: int, most: int) -> list[int]:
    """The views nearest to i in the group's order, alternating after and before: i+1, i-1, i+2, ..."""
    order = [i + s * d for d in range(1, k) for s in (1, -1)]
    return [j for j in order if 0 <= j < k][:most]


class _Flows:
    """Dense flows between the group's views, estimated once per ordered pair and alignment on grey, equalised copies.

    A pair is first aligned as a whole by a homography, so rotation, zoom and large shifts between cameras are taken
    out; DIS then estimates what is left (parallax, small motion). The homography is fitted (RANSAC) to matched ORB
    features, the identity without enough consistent matches; for two calibrated views the ground's homography is
    tried as well, its flow kept only where the pixel looks at the ground in front of both cameras."""

    def __init__(self, images: Sequence[np.ndarray], max_side: int, ground: Sequence[np.ndarray | None] | None = None):
        h, w = images[0].shape[:2]
        self.scale = min(1.0, max_side / max(h, w))
        self.size = (w, h)
        small = (max(8, round(w * self.scale)), max(8, round(h * self.scale)))
        grey = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in images]
        if self.scale < 1:
            grey = [cv2.resize(g, small, interpolation=cv2.INTER_AREA) for g in grey]
        self.grey = [cv2.equalizeHist(g) for g in grey]
        orb = cv2.ORB_create(nfeatures=1000)  # matching costs the square of this
        self.features = [orb.detectAndCompute(g, None) for g in self.grey]
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        gx, gy = np.meshgrid(np.arange(small[0], dtype=np.float32), np.arange(small[1], dtype=np.float32))
        self.grid = np.stack([gx, gy], axis=-1)  # (h, w, 2) pixel positions at the flow's scale
        to_small = np.diag([self.scale, self.scale, 1.0])  # the flows' convention: full-size = small / scale
        self.ground = [None if g is None else to_small @ np.asarray(g, np.float64)
                       for g in ground or [None] * len(images)]
        self._done: dict[tuple[int, int, int], np.ndarray] = {}
        self._homographies: dict[tuple[int, int], np.ndarray] = {}

    def pairs(self, i: int, j: int) -> list[np.ndarray]:
        """(H, W, 2) float32 offsets, full-size pixels: where each pixel of view i lies in view j, one per alignment
        tried (the features' homography; then the ground's, for two calibrated views)."""
        homs = [self._homography(i, j)]
        gi, gj = self.ground[i], self.ground[j]
        if gi is not None and gj is not None:
            homs.append(gj @ np.linalg.inv(gi))
        return [self._flow(i, j, k, hom) for k, hom in enumerate(homs)]

    def _flow(self, i: int, j: int, k: int, hom: np.ndarray) -> np.ndarray:
        if (i, j, k) not in self._done:  # kept at the flow's scale: K views of 4K at full size would take gigabytes
            small = self.grey[i].shape[::-1]
            aligned = cv2.warpPerspective(self.grey[j], hom, small, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                          borderMode=cv2.BORDER_REPLICATE)  # j seen from i
            rest = self.dis.calc(self.grey[i], aligned, None)  # (h, w, 2)
            there = cv2.perspectiveTransform((self.grid + rest).reshape(-1, 1, 2), hom).reshape(rest.shape)
            flow = there - self.grid
            if k == 1:  # the ground's: nowhere else (above the horizon it maps to points behind the cameras)
                seen = sees_shared_ground(self.ground[i], self.ground[j], self.grid + rest)
                flow[~seen] = -1e5  # far outside view j: no partner there
            self._done[(i, j, k)] = flow
        flow = self._done[(i, j, k)]
        if self.scale < 1:
            flow = cv2.resize(flow, self.size, interpolation=cv2.INTER_LINEAR) / self.scale
        return flow

    def _homography(self, i: int, j: int) -> np.ndarray:
        if (j, i) in self._homographies:  # one fit per pair of views: the way back is its inverse
            return np.linalg.inv(self._homographies[(j, i)])
        if (i, j) not in self._homographies:
            self._homographies[(i, j)] = self._fit(i, j)
        return self._homographies[(i, j)]

    def _fit(self, i: int, j: int) -> np.ndarray:
        (kp_i, des_i), (kp_j, des_j) = self.features[i], self.features[j]
        if des_i is None or des_j is None or len(kp_i) < 8 or len(kp_j) < 8:
            return np.eye(3)
        matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(des_i, des_j)
        if len(matches) < 20:
            return np.eye(3)
        src = np.float32([kp_i[m.queryIdx].pt for m in matches]).reshape(-1, 1, 2)
        dst = np.float32([kp_j[m.trainIdx].pt for m in matches]).reshape(-1, 1, 2)
        hom, inliers = cv2.findHomography(src, dst, cv2.RANSAC, 3.0, maxIters=1000)
        if hom is None or int(inliers.sum()) < 15:
            return np.eye(3)
        return hom


def _lend(own: np.ndarray, other: np.ndarray, there: np.ndarray, back: np.ndarray, limit: float,
          opts: FusionOptions) -> tuple[np.ndarray, np.ndarray] | None:
    """``other`` warped onto ``own`` and colour-matched, with its per-pixel weight; None when they share too little."""
    h, w = own.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = gx + there[..., 0], gy + there[..., 1]  # (H, W): where own's pixels are in other
    # bicubic: a bilinear warp blurs the partner, which costs most at high rates (measured on training data)
    warped = cv2.remap(other, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)  # (H, W, 3)
    returned = cv2.remap(back, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # (H, W, 2)
    mismatch = np.hypot(there[..., 0] + returned[..., 0], there[..., 1] + returned[..., 1])
    valid = (mismatch < opts.max_flow_error) & (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    if valid.mean() < opts.min_overlap or valid.sum() < 16:
        return None
    # every fourth row and column is plenty for three pairs of numbers
    colours = _robust_colour_fit(warped[::4, ::4], own[::4, ::4], valid[::4, ::4], limit, opts)
    if any(not 0.5 <= slope <= 2.0 for slope, _ in colours):
        return None  # no plausible colour match: the overlap is not the same content
    warped = _recoloured(warped, colours)
    disagreement = _disagreement(own - warped, opts)  # (H, W)
    weight = np.where(valid, np.exp(-disagreement / limit), 0).astype(np.float32)
    return warped, weight


def _robust_colour_fit(src: np.ndarray, dst: np.ndarray, sel: np.ndarray, limit: float,
                       opts: FusionOptions) -> list[tuple[float, float]]:
    """``_colour_fit`` of the pixels ``sel`` that show the same content. Where the alignment is wrong (another
    surface, a moving object, the ground's alignment on a wall) the overlap pairs unrelated colours, and a fit on all
    of it comes out flat. So two fits are tried, and the one under which more pixels agree within ``limit`` wins:
    on all of ``sel``, and on the better-agreeing half of ``sel`` as the views are, then again on the pixels that
    agree under that."""
    def agreeing(colours):
        return sel & (_disagreement(dst - _recoloured(src, colours), opts, 4) < limit)

    plain = _colour_fit(src, dst, sel)
    as_is = _disagreement(dst - src, opts, 4)
    robust = _colour_fit(src, dst, sel & (as_is <= np.median(as_is[sel])))
    agree = agreeing(robust)
    if agree.sum() >= 16:
        robust = _colour_fit(src, dst, agree)
    return max((plain, robust), key=lambda c: int(agreeing(c).sum()))


def _colour_fit(src: np.ndarray, dst: np.ndarray, sel: np.ndarray) -> list[tuple[float, float]]:
    """Exposure and white balance: each channel of ``dst`` as an affine function of ``src``'s, least squares on
    ``sel``; (slope, offset) per channel."""
    out = []
    for c in range(3):
        a, b = src[..., c][sel], dst[..., c][sel]
        spread = float(a.var())
        slope = float(((a - a.mean()) * (b - b.mean())).mean()) / spread if spread > 1e-6 else 1.0
        out.append((slope, float(b.mean()) - slope * float(a.mean())))
    return out


def _recoloured(image: np.ndarray, colours: list[tuple[float, float]]) -> np.ndarray:
    return image * np.float32([s for s, _ in colours]) + np.float32([o for _, o in colours])


def _disagreement(diff: np.ndarray, opts: FusionOptions, step: int = 1) -> np.ndarray:
    """(H, W): the local mean of the squared, blurred difference of two aligned views (``step``: of images
    subsampled by that much, so the blur and the window shrink with them)."""
    if opts.blur > 0:
        diff = cv2.GaussianBlur(diff, (0, 0), opts.blur / step)  # blur is linear: the difference of the blurred views
    side = max(1, round(opts.window / step))
    return cv2.boxFilter((diff * diff).sum(axis=2), -1, (side, side))
