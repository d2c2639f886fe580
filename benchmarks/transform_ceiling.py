"""How close is each rate point to what the transforms can reconstruct at all? (issue 10: the top rate points)

    .venv/bin/python benchmarks/transform_ceiling.py --corpus /var/tmp/mvic-runs/data/corpus \\
        --weights shared/codec/weights/ldmic-fast-lite-v5.safetensors [MORE.safetensors ...]

For each weights file and two validation sets (never the held-out sets: the corpus's *test* split as two-view
warps, and a synthetic plaza of seed 3000, which no training or held-out set uses), per rate point:

- ``exact``: PSNR of the model's exact coding path (eval-mode forward: what ``decompress`` gives) and its bits per
  pixel from the entropy model's likelihoods;
- ``ceiling``: PSNR when the gained latent is *not* rounded: g_s(g_a(x)) through that rate's gain and inverse gain,
  the best any rate could do with these transforms;
- and past the top: the top gain stretched by the ladder's last step once and twice (rounded), what adding rate
  points above the top would buy;
- with ``--latent-steps N``: the synthesis's own ceiling, the PSNR of the best latent Adam finds in N steps (from
  the top rate's un-rounded one, every weight frozen). Well above ``ceiling``, the analysis transform (the camera's
  encoder) is what limits; close to it, the synthesis (the server's decoder) is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from mvic.shared.codec.images import psnr as image_psnr
from mvic.shared.codec.images import to_pixels
from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import load_model
from mvic.shared.scene import SceneConfig
from mvic.tools.training.config import DataConfig
from mvic.tools.training.data import SyntheticGroups
from mvic.tools.training.sources import make_source
from torch import Tensor


def corpus_groups(root: Path, groups: int) -> Tensor:
    """(B, 2, 3, H, W) in [0, 1]: two-view warps of ``groups`` photos of the corpus's test split, cropped alike."""
    source = make_source(DataConfig(kind="photos", root=str(root), split="test", cameras=2, height=320), 0)
    picks = np.linspace(0, len(source) - 1, min(groups, len(source))).round().astype(int)
    views = [np.asarray(source.group(int(i))) for i in picks]  # each (2, H, W, 3) uint8
    h = min(v.shape[1] for v in views) // 64 * 64
    w = min(v.shape[2] for v in views) // 64 * 64
    return torch.from_numpy(np.stack([v[:, :h, :w] for v in views])).permute(0, 1, 4, 2, 3).float().div(255)


def plaza_groups(groups: int) -> Tensor:
    """(B, 3, 3, 256, 448) in [0, 1]: ``groups`` timestamps of a 3-camera plaza of seed 3000."""
    source = SyntheticGroups(SceneConfig(seed=3000, cameras=3, height=256, width=448), groups)
    views = np.stack([np.asarray(source.group(i)) for i in range(groups)])  # (B, V, H, W, 3)
    return torch.from_numpy(views).permute(0, 1, 4, 2, 3).float().div(255)


def psnr(x_hat: Tensor, x: Tensor) -> float:
    """On 8-bit images, as mvic-eval measures (over every view at once)."""
    return image_psnr(to_pixels(x_hat), to_pixels(x))


def synthesis_ceiling(model: LDMIC, x: Tensor, steps: int) -> float:
    """PSNR of g_s at the latent Adam finds in ``steps`` steps from the top rate's (lr 0.05, MSE, weights frozen)."""
    b, v = x.shape[:2]
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # start at the top rate's un-rounded latent, the 'ceiling' of that rate
        gain, inverse = (t[-1].view(1, -1, 1, 1) for t in (model.gains.y_gain, model.gains.y_inverse))
        latent = model.g_a(x.flatten(0, 1)) * gain * inverse
    latent.requires_grad_(True)
    optimiser = torch.optim.Adam([latent], lr=0.05)
    for _ in range(steps):
        loss = (model._synthesize(latent, b, v) - x).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return psnr(model._synthesize(latent, b, v), x)


@torch.no_grad()
def measure(model: LDMIC, x: Tensor) -> list[str]:
    b, v, _, h, w = x.shape
    y = model.g_a(x.flatten(0, 1))  # (B*V, M, h/16, w/16), before any gain
    gains, inverses = model.gains.y_gain, model.gains.y_inverse  # (R, M)

    def through(gain: Tensor, inverse: Tensor, rounded: bool) -> float:
        latent = y * gain.view(1, -1, 1, 1)
        latent = latent.round() if rounded else latent
        return psnr(model._synthesize(latent * inverse.view(1, -1, 1, 1), b, v), x)

    lines = []
    for r in range(gains.shape[0]):
        out = model(x, torch.full((b,), r))
        bits = -(out.likelihoods_y.log2().sum() + out.likelihoods_z.log2().sum())
        exact, ceiling = psnr(out.x_hat, x), through(gains[r], inverses[r], rounded=False)
        lines.append(f"  rate {r}: exact {exact:6.2f} dB at {float(bits) / (b * v * h * w):.3f} bpp   "
                     f"ceiling {ceiling:6.2f} dB   headroom {ceiling - exact:5.2f} dB")
    step = gains[-1] / gains[-2]
    beyond = [f"{through(gains[-1] * step ** k, inverses[-1] / step ** k, rounded=True):.2f}" for k in (1, 2)]
    lines.append(f"  past the top (gain x last step, x its square): {' / '.join(beyond)} dB")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, nargs="+", required=True)
    p.add_argument("--corpus", type=Path, required=True, help="mvic-corpus build's folder (its test split is used)")
    p.add_argument("--groups", type=int, default=6, help="corpus photos (two views each)")
    p.add_argument("--plaza-groups", type=int, default=2, help="plaza timestamps (three views each)")
    p.add_argument("--latent-steps", type=int, default=0,
                   help="also the synthesis's ceiling: Adam steps on the latent (200: minutes per set on 2 cores)")
    args = p.parse_args()
    torch.manual_seed(0)
    sets = {"corpus test split, 2-view warps": corpus_groups(args.corpus, args.groups),
            "plaza seed 3000, 3 cameras": plaza_groups(args.plaza_groups)}
    for path in args.weights:
        model = load_model(path)
        for name, x in sets.items():
            print(f"{path.name} on the {name} {tuple(x.shape)}:")
            print("\n".join(measure(model, x)))
            if args.latent_steps > 0:
                print(f"  synthesis ceiling (latent optimised, {args.latent_steps} Adam steps): "
                      f"{synthesis_ceiling(model, x, args.latent_steps):.2f} dB")


if __name__ == "__main__":
    main()
