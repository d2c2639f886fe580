"""The joint decoder's view fusion (``mvic.shared.codec.view_fusion``) on training data: what it gains, what it costs.

    .venv/bin/python benchmarks/view_fusion.py --corpus /var/tmp/mvic-runs/data/corpus \\
        [--groups 8] [--agreement 7e-4 1.4e-3]

Two kinds of group, both from *training* data (the held-out sets are for mvic-eval, never for choosing):
``warps`` = two views of one photo of the corpus's train split under the mild perspective warps of training
(``PhotoWarpGroups``, 512x512: small baselines, like a stereo rig); ``plazas`` = two neighbouring cameras of the
campaign's training plazas (rendered here as ``scripts/campaign.sh`` renders them, cropped to 256x512: wide
baselines, like surveillance cameras around a square). Every view is coded alone by the given weights (eval-mode
forward, the exact latents; bits from the likelihoods); then the group's reconstructions are decoded three ways:
the network alone (JCT + g_s, the views decoded together), the network followed by the fusion for each
``--agreement``, and an oracle of alignment. ``warps``: each view averaged with the other on their overlap under
the true homography, colours matched (bicubic warp, equal weights): what plain averaging under perfect alignment
gives. ``plazas``: the fusion (first ``--agreement``) given the scene's exact alignment (every visible plane's
homography) instead of the flows it estimates: what better alignment could gain there.

Prints, per kind, PSNR per rate point and the BD-rate of each decoding against the network alone, and the fusion's
time per group on this CPU (one thread) at 512x512 and at 1080x1920 (``--time-size``).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from mvic.shared.codec.registry import load_model
from mvic.shared.codec.view_fusion import FusionOptions, fuse_views
from mvic.shared.scene import Scene, SceneConfig
from mvic.tools.evaluation.bdrate import bd_rate
from mvic.tools.training.photo_views import PhotoWarpGroups


def warp_groups(corpus: str, n: int):
    """(views (2, 512, 512, 3) uint8, view 1 -> view 0 homography) of the train split, another seed than training."""
    src = PhotoWarpGroups(corpus, "train", cameras=2, size=512, seed=11)
    for g in np.random.default_rng(5).choice(len(src), n, replace=False):
        views, homs = src.group_with_homographies(int(g))
        yield views, homs[0] @ np.linalg.inv(homs[1])


def plaza_groups(corpus: str, n: int):
    """Two neighbouring cameras of one frame of a training plaza (the campaign's: seeds 0-7, 7 cameras of 288x512,
    textured with the corpus's photos, 12 frames), cropped to 256x512, with the scene's true alignment."""
    rng = np.random.default_rng(6)
    for _ in range(n):
        seed, c, frame = int(rng.integers(8)), int(rng.integers(6)), int(rng.integers(12))
        scene = Scene(SceneConfig(seed=seed, cameras=7, height=288, width=512, textures=f"{corpus}/photos"))
        views = scene.render(frame)[c:c + 2]
        h = views.shape[1] // 64 * 64
        top = (views.shape[1] - h) // 2
        yield views[:, top:top + h, :views.shape[2] // 64 * 64], TrueGeometry(scene, frame, [c, c + 1], top, h)


class TrueGeometry:
    """A rendered plaza's exact alignment (``view_fusion.Alignment``): each pixel's visible surface is a plane that
    maps to the other camera by its homography; the sky, a backdrop fixed to the image, by the identity; pixels
    whose surface the other camera does not see land where the flows disagree, so the fusion leaves them out."""

    def __init__(self, scene: Scene, frame: int, cameras: list[int], top: int, height: int):
        seen = [scene.surfaces(frame, c) for c in cameras]
        self.quads, self.cameras = seen[0][0], [scene.cameras[c] for c in cameras]
        self.ids = [ids[top:top + height] for _, ids in seen]
        self.crop = np.array([[1, 0, 0], [0, 1, -top], [0, 0, 1.0]])  # full view -> cropped pixels
        rig, (h, w) = scene.rig(), (scene.config.height, scene.config.width)
        self.ground = [self.crop @ rig.ground(scene.cameras[c].name, h, w) for c in cameras]  # a calibrated rig's

    def _to_image(self, view: int, quad) -> np.ndarray:
        """The plane's coordinates (a, b, 1) -> cropped pixels of ``view``."""
        return self.crop @ self.cameras[view].plane_to_image(np.stack([quad.u, quad.v, quad.origin], axis=1))

    def pair(self, i: int, j: int) -> np.ndarray:
        ids = self.ids[i]
        h, w = ids.shape
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        grid = np.stack([gx, gy], axis=-1)
        there = grid.copy()
        for k in np.unique(ids[ids > 0]):
            hom = self._to_image(j, self.quads[k - 1]) @ np.linalg.inv(self._to_image(i, self.quads[k - 1]))
            sel = ids == k
            there[sel] = cv2.perspectiveTransform(grid[sel].reshape(-1, 1, 2), hom).reshape(-1, 2)
        return there - grid


def oracle(own: np.ndarray, other: np.ndarray, to_own: np.ndarray) -> np.ndarray:
    """View 0 averaged with view 1 warped by the true homography, colours matched on the overlap."""
    h, w = own.shape[:2]
    a, b = own.astype(np.float32), cv2.warpPerspective(other.astype(np.float32), to_own, (w, h), flags=cv2.INTER_CUBIC)
    valid = cv2.warpPerspective(np.ones((h, w), np.float32), to_own, (w, h), flags=cv2.INTER_NEAREST) > 0.5
    valid = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    for c in range(3):
        slope, offset = np.polyfit(b[..., c][valid], a[..., c][valid], 1)
        b[..., c] = slope * b[..., c] + offset
    a[valid] = (a[valid] + b[valid]) / 2
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b) ** 2).mean())


def measure(model, groups, options: list[FusionOptions], kind: str):
    rates = model.spec.num_rates
    extra = {"warps": ["oracle"], "plazas": ["fusion, calibrated ground", "fusion, true alignment"]}[kind]
    names = ["network", *(f"fusion {o.agreement:g}" for o in options), *extra]
    bits, err, pixels, seconds, n = np.zeros(rates), np.zeros((len(names), rates)), 0, 0.0, 0
    for views, truth in groups:
        v, h, w = views.shape[:3]
        x = torch.from_numpy(views).permute(0, 3, 1, 2).float().div(255).unsqueeze(0)  # (1, V, 3, H, W)
        pixels += v * h * w
        for r in range(rates):
            with torch.no_grad():
                out = model(x, torch.full((1, v), r))
            view_bits = -(out.likelihoods_y.log2().sum((2, 3, 4)) + out.likelihoods_z.log2().sum((2, 3, 4)))[0]
            bits[r] += float(view_bits.sum())
            bpp = [float(b) / (h * w) for b in view_bits]
            net = list(out.x_hat[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
            decoded = [net]
            for o in options:
                t0 = time.perf_counter()
                decoded.append(fuse_views(net, bpp, o))
                seconds += time.perf_counter() - t0
                n += 1
            if kind == "warps":  # truth: the homography view 1 -> view 0
                decoded.append([oracle(net[0], net[1], truth), oracle(net[1], net[0], np.linalg.inv(truth))])
            else:  # truth: the scene's calibration, then its exact alignment in place of the estimated flows
                decoded.append(fuse_views(net, bpp, options[0], ground=truth.ground))
                decoded.append(fuse_views(net, bpp, options[0], alignment=truth))
            for k, images in enumerate(decoded):
                err[k, r] += sum(mse(a, b) * h * w for a, b in zip(images, views))
    bpp = bits / pixels
    psnr = 10 * np.log10(255**2 / (err / pixels))
    return names, bpp, psnr, seconds / max(n, 1)


def report(kind: str, names, bpp, psnr) -> None:
    print(f"\n### {kind}\n")
    print("| rate | bpp | " + " | ".join(f"{n} dB" for n in names) + " |")
    print("|---" * (2 + len(names)) + "|")
    for r in range(len(bpp)):
        print(f"| {r} | {bpp[r]:.3f} | " + " | ".join(f"{psnr[k, r]:.2f}" for k in range(len(names))) + " |")
    print("\nBD-rate vs the network alone: " + ", ".join(
        f"{n} {bd_rate(bpp, psnr[0], bpp, psnr[k]):+.1f} %" for k, n in enumerate(names) if k))


def time_fusion(size: tuple[int, int], views: int, repeat: int = 3) -> float:
    """Seconds per group of the fusion alone (default options) on a shifted, noisy texture of ``size``."""
    h, w = size
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (h + 40, w + 40 * views, 3)).astype(np.float32), (0, 0), 3) * 3
    scene = np.clip(scene - scene.mean() + 128, 0, 255)
    group = [np.clip(scene[20:20 + h, 30 * i:30 * i + w] + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
             for i in range(views)]
    fuse_views(group, [0.3] * views)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fuse_views(group, [0.3] * views)
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="shared/codec/weights/ldmic-fast-lite-v5.safetensors")
    p.add_argument("--corpus", required=True, help="mvic-corpus folder (its train split is used, and its photos "
                   "texture the plazas)")
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--agreement", type=float, nargs="+", default=[FusionOptions().agreement])
    p.add_argument("--time-size", default="1080x1920")
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    model = load_model(args.weights)
    options = [FusionOptions(agreement=a) for a in args.agreement]
    print(f"weights {args.weights}; {args.groups} two-view groups per kind; one thread")
    for kind, groups in (("warps", warp_groups(args.corpus, args.groups)),
                         ("plazas", plaza_groups(args.corpus, args.groups))):
        names, bpp, psnr, seconds = measure(model, groups, options, kind)
        report(kind, names, bpp, psnr)
        print(f"fusion time: {seconds:.3f} s per group")
    th, tw = (int(s) for s in args.time_size.split("x"))
    for views in (2, 7):
        print(f"fusion alone, {views} views of {th}x{tw}: {time_fusion((th, tw), views):.2f} s per group")


if __name__ == "__main__":
    main()
