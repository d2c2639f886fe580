"""Short A/B runs of training variants from the same weights: per-rate bpp and PSNR after N steps (issue 10).

    .venv/bin/python benchmarks/ab_training.py --config configs/campaign-fast-lite.yaml --root /var/tmp/mvic-runs \\
        --init shared/codec/weights/W.safetensors --steps 150 --variant base "" --variant gains10 gain_lr_scale=10

Each variant is the config with ``optim`` keys overridden (``key=value``, YAML values), trained ``--steps`` steps
from ``--init`` in a fresh run folder (same seed, same batches), then measured on a fixed validation batch of the
corpus's *train* split (seed 4242; the held-out sets are never used to choose between variants): for every rate
point, the bits per pixel from the likelihoods and the PSNR of the eval-mode (exact) forward. Prints a table.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from mvic.shared.codec.model import LDMIC
from mvic.shared.model_table import spec_by_name
from mvic.tools.training.checkpoint import load_state
from mvic.tools.training.config import OptimConfig, load_config
from mvic.tools.training.data import GroupBatcher
from mvic.tools.training.photo_views import PhotoWarpGroups
from mvic.tools.training.train import train


@torch.no_grad()
def measure(model: LDMIC, x: torch.Tensor) -> list[tuple[float, float]]:
    """(bpp, PSNR dB) per rate point on x: (B, V, 3, H, W)."""
    model.eval()
    b, v, _, h, w = x.shape
    out = []
    for q in range(model.spec.num_rates):
        rd = model(x, torch.full((b,), q))
        bits = -(rd.likelihoods_y.log2().sum() + rd.likelihoods_z.log2().sum())
        mse = (rd.x_hat.clamp(0, 1) - x).pow(2).mean()
        out.append((float(bits) / (b * v * h * w), -10 * math.log10(float(mse))))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--root", type=Path, default=Path("."), help="folder the config's data paths are relative to")
    p.add_argument("--init", type=Path, required=True)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), required=True,
                   help='e.g. gains10 "gain_lr_scale=10 lr=2e-4" (space-separated optim keys)')
    args = p.parse_args(argv)
    config = args.config.resolve()
    init = args.init.resolve()
    os.chdir(args.root)
    base = load_config(config)
    corpus = next(d.root for d in (base.data, *base.extra_data) if d.kind == "photos")
    val = GroupBatcher(PhotoWarpGroups(corpus, split="train", cameras=2, size=320, seed=4242), 4, 256, 2, 2,
                       spec_by_name(base.model).num_rates, seed=4242).next().images
    rates = spec_by_name(base.model).num_rates
    print(f"# {args.steps} steps from {init.name}, validation: 4 groups x 2 views of the corpus train split\n")
    print("| variant | overrides | s | " + " | ".join(f"rate {q} bpp / dB" for q in range(rates)) + " |")
    print("|---|---|---|" + "---|" * rates, flush=True)
    for name, overrides in args.variant:
        fields = OptimConfig.__dataclass_fields__
        raw = dict(o.partition("=")[::2] for o in overrides.split())
        unknown = set(raw) - set(fields)
        if unknown:
            raise SystemExit(f"unknown optim keys {sorted(unknown)}")
        # YAML values, except for text keys (YAML would read amp=off as False)
        changes = {k: v if isinstance(fields[k].default, str) else yaml.safe_load(v) for k, v in raw.items()}
        optim = replace(base.optim, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()},
                        max_steps=args.steps)
        cfg = replace(base, init_from=str(init), optim=optim, checkpoint_minutes=0.0, checkpoint_every=10**9)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            train(cfg, Path(tmp) / "run", progress=False)
            seconds = time.monotonic() - t0
            model = LDMIC(spec_by_name(cfg.model))
            model.load_state_dict(load_state(Path(tmp) / "run"), strict=True)
        model.update(force=True)
        points = measure(model, val)
        print(f"| {name} | {overrides or '-'} | {seconds:.0f} | "
              + " | ".join(f"{bpp:.3f} / {db:.2f}" for bpp, db in points) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
