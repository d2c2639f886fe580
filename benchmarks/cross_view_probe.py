"""Probe: would a spatially aligned cross-view attention give joint decoding a gain? (issue 10, "joint >= 2 %")

    .venv/bin/python benchmarks/cross_view_probe.py --corpus /var/tmp/mvic-runs/data/corpus \\
        --weights shared/codec/weights/ldmic-fast-lite-v5.safetensors --minutes 45

The shipped JCT's efficient attention pools the other view into a few global vectors, so joint decoding equals
separate decoding (0.0 %). This probe adds, in front of ``jct_1`` (latent resolution, M channels), a branch of full
softmax cross-attention: every latent position of a view attends to every position of the other views (4 heads of
32 channels, ``scaled_dot_product_attention``), through a residual block of features, with a zero-initialised
output projection. It is active only for V > 1, so separate decoding stays exactly the given weights' and joint
decoding starts equal to it. Everything else is frozen, unless ``--unfreeze`` names decoder modules to train too
(then separate decoding moves as well: its PSNR is printed). Training is on lambda-weighted MSE of two-view warp
groups of the corpus's *train* split (the rates are fixed, since the encoder and entropy model are frozen).

It prints, at the start, every ``--eval-every`` steps and at the end, joint minus separate PSNR (dB) per rate point
on a fixed set of 24 two-view groups of the train split with another seed (the held-out sets are never used to
choose). At this slope, 2 % BD-rate is about +0.075 dB. The branch is an experiment, not part of the codec: it
lives here, and nothing ships it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mvic.shared.codec._compressai import ResidualBlock
from mvic.shared.codec.gains import RateGains
from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import load_model
from mvic.tools.training.data import Batch, GroupBatcher
from mvic.tools.training.photo_views import PhotoWarpGroups
from torch import Tensor, nn


class CrossViewBranch(nn.Module):
    """x (B, V, C, h, w) -> x + W_o softmax-attention(view k's queries, the other views' keys and values)."""

    def __init__(self, channels: int, heads: int = 4, head_channels: int = 32):
        super().__init__()
        self.heads, self.dk = heads, head_channels
        self.features = ResidualBlock(channels, channels)
        self.queries, self.keys, self.values = (nn.Conv2d(channels, heads * head_channels, 1) for _ in range(3))
        self.out = nn.Conv2d(heads * head_channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, v, c, h, w = x.shape
        if v == 1:
            return x
        hd, dk, n = self.heads, self.dk, h * w
        f = self.features(x.flatten(0, 1))  # (B*V, C, h, w)
        q, k, val = (conv(f).view(b, v, hd, dk, n).transpose(-1, -2) for conv in (self.queries, self.keys, self.values))
        attended = []
        for i in range(v):
            others = [j for j in range(v) if j != i]
            keys = k[:, others].transpose(1, 2).reshape(b, hd, (v - 1) * n, dk)  # (B, hd, (V-1)n, dk)
            values = val[:, others].transpose(1, 2).reshape(b, hd, (v - 1) * n, dk)
            attended.append(F.scaled_dot_product_attention(q[:, i], keys, values))  # (B, hd, n, dk)
        a = torch.stack(attended, 1).transpose(-1, -2).reshape(b * v, hd * dk, h, w)  # (B*V, hd*dk, h, w)
        return x + self.out(a).view(b, v, c, h, w)


class BranchThenJCT(nn.Module):
    def __init__(self, branch: CrossViewBranch, jct: nn.Module):
        super().__init__()
        self.branch, self.jct = branch, jct

    def forward(self, x: Tensor) -> Tensor:
        return self.jct(self.branch(x))


@torch.no_grad()
def decoder_input(model: LDMIC, x: Tensor, rate: Tensor) -> Tensor:
    """The exact (eval-mode) dequantised latents of x: (B, V, 3, H, W) -> (B*V, M, H/16, W/16). The branch trains on
    what the decoder will really see, not on the training forward's noisy latents (the encoder is frozen anyway)."""
    b, v = x.shape[:2]
    r = model._rates(rate, b, v)
    y = model.g_a(x.flatten(0, 1)) * RateGains.pick(model.gains.y_gain, r)
    return model.latent_codec.forward(y, r, training=False).y_hat * RateGains.pick(model.gains.y_inverse, r)


@torch.no_grad()
def joint_gain(model: LDMIC, batches: list[Batch]) -> tuple[list[float], float]:
    """Mean joint minus separate PSNR (dB) per rate point over the batches' views, and the separate PSNR's mean."""
    model.eval()
    gains, separate = [], []
    for q in range(model.spec.num_rates):
        diffs = []
        for batch in batches:
            x = batch.images
            b, v = x.shape[:2]
            joint = model(x, torch.full((b,), q)).x_hat.clamp(0, 1)  # eval mode: what decompress gives
            alone = model(x.flatten(0, 1).unsqueeze(1), torch.full((b * v,), q)).x_hat.clamp(0, 1).view_as(joint)
            psnr = [-10 * torch.log10((r - x).pow(2).mean(dim=(2, 3, 4))) for r in (joint, alone)]
            diffs.append((psnr[0] - psnr[1]).flatten())
            separate.append(float(psnr[1].mean()))
        gains.append(float(torch.cat(diffs).mean()))
    model.train()
    return gains, float(np.mean(separate))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True, help="an mvic-corpus folder (its train split is used)")
    p.add_argument("--weights", type=Path, required=True, help="checkerboard weights to probe (frozen)")
    p.add_argument("--unfreeze", nargs="*", default=[], metavar="PREFIX",
                   help="decoder modules that train with the branch, at --lr-unfrozen (e.g. jct_1 synthesis_1)")
    p.add_argument("--lr-unfrozen", type=float, default=1e-5)
    p.add_argument("--minutes", type=float, default=45.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-every", type=int, default=400)
    p.add_argument("--lambdas", type=float, nargs="+", default=[24, 73, 222, 674, 2048])
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = load_model(args.weights)
    if len(args.lambdas) != model.spec.num_rates:
        raise SystemExit(f"--lambdas needs {model.spec.num_rates} values")
    model.requires_grad_(False)
    if set(args.unfreeze) - {"jct_1", "synthesis_1", "jct_2", "synthesis_2"}:
        raise SystemExit("--unfreeze takes decoder modules: jct_1, synthesis_1, jct_2, synthesis_2")
    unfrozen = [prm for name, prm in model.named_parameters() if name.split(".")[0] in args.unfreeze]
    for prm in unfrozen:
        prm.requires_grad_(True)
    branch = CrossViewBranch(model.spec.m)
    model.jct_1 = BranchThenJCT(branch, model.jct_1)
    rates, lambdas = model.spec.num_rates, torch.tensor(args.lambdas)
    train = GroupBatcher(PhotoWarpGroups(args.corpus, "train", cameras=4, size=320, seed=0), 4, 256, 2, 2, rates)
    probe = GroupBatcher(PhotoWarpGroups(args.corpus, "train", cameras=2, size=320, seed=7), 4, 256, 2, 2, rates,
                         seed=7)
    probe_batches = [probe.next() for _ in range(6)]
    own = list(branch.parameters())
    trained = own + unfrozen
    groups = [{"params": own}]
    if unfrozen:
        groups.append({"params": unfrozen, "lr": args.lr_unfrozen})
    opt = torch.optim.Adam(groups, lr=args.lr)

    def report(label: str) -> None:
        gains, separate = joint_gain(model, probe_batches)
        print(f"| {label} | {time.monotonic() - t0:.0f} | " + " | ".join(f"{g:+.3f}" for g in gains)
              + f" | {np.mean(gains):+.3f} | {separate:.3f} |", flush=True)

    t0 = time.monotonic()
    print(f"# cross-view branch on {args.weights.name}, lr {args.lr:g}, unfrozen {args.unfreeze or 'none'} "
          f"(lr {args.lr_unfrozen:g}): joint - separate PSNR (dB), 24 groups x 2 views\n")
    print("| step | s | " + " | ".join(f"rate {q}" for q in range(rates)) + " | mean | separate, dB |")
    print("|---|---|" + "---|" * (rates + 2))
    report("0")
    step = 0
    model.train()
    while time.monotonic() - t0 < args.minutes * 60:
        batch = train.next()
        x = batch.images
        b, v = x.shape[:2]
        y_hat = decoder_input(model, x, batch.rate)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x_hat = model._synthesize(y_hat, b, v)
        loss = (lambdas[batch.rate] * (x_hat.float() - x).pow(2).mean(dim=(1, 2, 3, 4))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        step += 1
        if step % args.eval_every == 0:
            report(str(step))
    report(f"{step} (end)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
