"""``mvic-train``: train a variable-rate LDMIC on view groups; resumable, time-budgeted, logged, exportable.

    mvic-train --config cfg.yaml --run runs/lite [--max-minutes 30] [--device cuda]   # trains or resumes
    mvic-train --run runs/lite --export weights.safetensors                          # shipped-weights file

Loss (paper Sec. 3.3, with all rate points at once): for each group b with rate index q_b,
lambda_{q_b} * D_b + R_b, where D_b is the MSE over its views (or 1 - MS-SSIM, lambda / 32), R_b the bits of all its
views per pixel of one view divided by the view count (mean bpp per view), averaged over the batch. Mixed
quantization is the model's training forward. Adam (main) + Adam (aux, the entropy bottleneck's quantiles),
gradient clipping, step-wise lr milestones. A CSV row per log step: step, loss, bpp, mse, psnr, aux, lr, seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import torch
from pytorch_msssim import ms_ssim

from mvic.shared.codec.model import LDMIC, RDOutput
from mvic.shared.codec.registry import export_weights
from mvic.shared.model_table import spec_by_name
from mvic.shared.scene import SceneConfig
from mvic.shared.training.checkpoint import load_checkpoint, save_checkpoint
from mvic.shared.training.config import RunConfig, config_to_dict, load_config
from mvic.shared.training.data import FolderGroups, GroupBatcher, SyntheticGroups
from mvic.shared.training.datasets import Cityscapes, InStereo2K, WildTrackFrames


def rd_loss(out: RDOutput, x: torch.Tensor, rate: torch.Tensor, lambdas: torch.Tensor, metric: str):
    """Returns (loss, bpp, mse) for a batch x: (B, V, 3, H, W)."""
    b, v, _, h, w = x.shape
    bits = (out.likelihoods_y.log2().sum(dim=(1, 2, 3, 4)) + out.likelihoods_z.log2().sum(dim=(1, 2, 3, 4))).neg()
    bpp = bits / (v * h * w)  # (B,) mean bpp per view
    mse = (out.x_hat - x).pow(2).mean(dim=(1, 2, 3, 4))  # (B,)
    lam = lambdas[rate]
    if metric == "mse":
        distortion = mse
    elif metric == "ms-ssim":
        sim = ms_ssim(out.x_hat.flatten(0, 1).clamp(0, 1), x.flatten(0, 1), data_range=1.0, size_average=False)
        distortion = 1 - sim.view(b, v).mean(dim=1)
        lam = lam / 32
    else:
        raise ValueError(f"metric must be mse or ms-ssim, got {metric!r}")
    return (lam * distortion + bpp).mean(), bpp.mean(), mse.mean()


def make_source(cfg: RunConfig):
    d = cfg.data
    if d.kind == "synthetic":
        scene = SceneConfig(seed=cfg.seed, cameras=d.cameras, height=d.height, width=d.width)
        return SyntheticGroups(scene, d.frames, d.scenes)
    if d.kind == "folder":
        return FolderGroups(d.root)
    kinds = {"wildtrack": WildTrackFrames, "instereo2k": InStereo2K, "cityscapes": Cityscapes}
    if d.kind in kinds:
        return kinds[d.kind](d.root, d.split)
    raise ValueError(f"data.kind must be one of synthetic, folder, {', '.join(kinds)}; got {d.kind!r}")


def train(cfg: RunConfig, run_dir: Path, device: str = "cpu", max_minutes: float | None = None,
          progress: bool = True) -> int:
    """Train until optim.max_steps or the time budget; checkpoints in run_dir. Returns the last step."""
    torch.manual_seed(cfg.seed)
    spec = spec_by_name(cfg.model)
    model = LDMIC(spec).to(device).train()
    aux_params = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    main_params = [p for n, p in model.named_parameters() if not n.endswith("quantiles")]
    opt = torch.optim.Adam(main_params, lr=cfg.optim.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=cfg.optim.aux_lr)
    optimizers = {"main": opt, "aux": aux_opt}
    step = load_checkpoint(run_dir, model, optimizers) if (run_dir / "checkpoint.json").is_file() else 0
    batcher = GroupBatcher(make_source(cfg), cfg.optim.batch_size, cfg.optim.crop, cfg.data.k_min, cfg.data.k_max,
                           spec.num_rates, seed=cfg.seed + step)
    lambdas = torch.tensor(spec.lambdas, device=device)
    deadline = time.monotonic() + 60 * max_minutes if max_minutes else math.inf
    log_path = run_dir / "log.csv"
    new_log = not log_path.is_file()
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "a", newline="") as log_file:
        log = csv.writer(log_file)
        if new_log:
            log.writerow(["step", "loss", "bpp", "mse", "psnr_db", "aux", "lr", "seconds"])
        while step < cfg.optim.max_steps and time.monotonic() < deadline:
            lr = cfg.optim.lr * cfg.optim.lr_gamma ** sum(step >= m for m in cfg.optim.lr_milestones)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = batcher.next()
            x, rate = batch.images.to(device), batch.rate.to(device)
            out = model(x, rate)
            loss, bpp, mse = rd_loss(out, x, rate, lambdas, cfg.optim.metric)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(main_params, cfg.optim.clip)
            opt.step()
            aux = model.aux_loss()
            aux_opt.zero_grad(set_to_none=True)
            aux.backward()
            aux_opt.step()
            step += 1
            loss, bpp, mse, aux = (float(t.detach()) for t in (loss, bpp, mse, aux))
            if step % cfg.log_every == 0 or step == 1:
                psnr = -10 * math.log10(max(mse, 1e-10))
                log.writerow([step, f"{loss:.5f}", f"{bpp:.5f}", f"{mse:.6f}", f"{psnr:.3f}", f"{aux:.3f}",
                              f"{lr:.3g}", f"{time.monotonic() - t0:.1f}"])
                log_file.flush()
                if progress:
                    print(f"step {step}: loss {loss:.4f} bpp {bpp:.4f} psnr {psnr:.2f} dB "
                          f"K={x.shape[1]}", file=sys.stderr, flush=True)
            if step % cfg.checkpoint_every == 0:
                save_checkpoint(run_dir, step, model, optimizers, config_to_dict(cfg))
    save_checkpoint(run_dir, step, model, optimizers, config_to_dict(cfg))
    return step


def export_run(run_dir: Path, out: Path) -> str:
    """Export a run's checkpoint as a shipped-weights file (CDF tables updated); returns its sha256."""
    cfg = json.loads((run_dir / "checkpoint.json").read_text())["config"]
    model = LDMIC(spec_by_name(cfg["model"]))
    load_checkpoint(run_dir, model, {})
    return export_weights(model.eval(), out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvic-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run folder: checkpoint, log.csv (resumed if present)")
    p.add_argument("--config", type=Path, help="YAML config (defaults: RunConfig in config.py)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    p.add_argument("--export", type=Path, metavar="FILE", help="export the run's checkpoint as weights and exit")
    p.add_argument("--validate-config", action="store_true", help="check the config and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.export:
        digest = export_run(args.run, args.export)
        print(f"{args.export}: sha256 {digest}")
        return 0
    try:
        cfg = load_config(args.config)
    except (ValueError, OSError) as exc:
        print(f"mvic-train: config error: {exc}", file=sys.stderr)
        return 2
    if args.validate_config:
        print("config ok")
        return 0
    step = train(cfg, args.run, args.device, args.max_minutes)
    print(f"stopped at step {step}; checkpoint in {args.run}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
