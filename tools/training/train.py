"""``mvic-train``: train a variable-rate LDMIC on view groups; resumable, time-budgeted, logged, exportable.

    mvic-train --config cfg.yaml --run runs/lite [--max-minutes 30] [--device cuda]   # trains or resumes
    mvic-train --run runs/lite --export weights.safetensors                          # shipped-weights file
    mvic-train --config configs/ldmic-from-compressai.yaml --run runs/paper --device cuda   # from CompressAI's mbt2018
    mvic-train --run runs/staged --stages s1.yaml s2.yaml s3.yaml    # stages in order, resumed where stopped (stages.py)

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
from dataclasses import replace
from pathlib import Path

import torch
from pytorch_msssim import ms_ssim
from tqdm import tqdm

from mvic.shared.codec.model import LDMIC, RDOutput
from mvic.shared.codec.registry import CDF_TABLES, export_weights, write_sidecar_record
from mvic.shared.config import to_dict
from mvic.shared.errors import ConfigError, WeightsError
from mvic.shared.model_table import ContextModel, spec_by_name
from mvic.tools.training.checkpoint import (
    PIECES_INDEX,
    load_checkpoint,
    load_state,
    save_checkpoint,
    save_pieces,
)
from mvic.tools.training.compressai_init import init_from_compressai, parse_source, zero_refine
from mvic.tools.training.config import RunConfig, load_config
from mvic.tools.training.data import BatchStream, GroupBatcher, MixedBatcher
from mvic.tools.training.ema import WeightsEMA
from mvic.tools.training.reladder import follow_ladder, starting_ladder
from mvic.tools.training.sources import make_source
from mvic.tools.training.stages import checkpoint_step, plan_stages, run_stages
from mvic.tools.training.stopping import StopSignals


def rd_loss(out: RDOutput, x: torch.Tensor, rate: torch.Tensor, lambdas: torch.Tensor, metric: str):
    """Returns (loss, bpp, mse) for a batch x: (B, V, 3, H, W)."""
    b, v, _, h, w = x.shape
    bits = (out.likelihoods_y.log2().sum(dim=(1, 2, 3, 4)) + out.likelihoods_z.log2().sum(dim=(1, 2, 3, 4))).neg()
    bpp = bits / (v * h * w)  # (B,) mean bpp per view
    if out.x_hat is None:  # a rate-only forward (train_only of the entropy model): the bits are the loss
        return bpp.mean(), bpp.mean(), torch.full((), math.nan, device=bpp.device)
    x_hat = out.x_hat.float()  # bf16 under autocast; the distortion is always measured in float32
    mse = (x_hat - x).pow(2).mean(dim=(1, 2, 3, 4))  # (B,)
    lam = lambdas[rate]
    if metric == "mse":
        distortion = mse
    elif metric == "ms-ssim":
        sim = ms_ssim(x_hat.flatten(0, 1).clamp(0, 1), x.flatten(0, 1), data_range=1.0, size_average=False)
        distortion = 1 - sim.view(b, v).mean(dim=1)
        lam = lam / 32
    elif metric == "psnr":  # a decoder-only run (DECODER_ONLY): the bits cannot move, so no lambda trades them
        return (10 * torch.log10(mse.clamp_min(1e-10))).mean(), bpp.mean(), mse.mean()
    else:
        raise ValueError(f"metric must be mse, ms-ssim or psnr, got {metric!r}")
    return (lam * distortion + bpp).mean(), bpp.mean(), mse.mean()


def _cpu_flags() -> set[str]:
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(flags.split(":", 1)[-1].split())


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX or AVX-512-BF16), where bf16 autocast can pay off."""
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def use_channels_last(setting: str, device: str) -> bool:
    """optim.channels_last: auto = on CUDA and on a CPU with AVX-512 (2-core AMX Xeon: 1.76 against 2.13 s per step
    in fp32; 2-core AVX2 EPYC: 5.4-5.7 against 4.2-4.7 s, slower; 2-core AVX-512-BF16 EPYC: 1.53 against 1.71 s)."""
    if setting not in ("off", "on", "auto"):
        raise ValueError(f"optim.channels_last must be off, on or auto, got {setting!r}")
    return setting == "on" or (setting == "auto" and (device.startswith("cuda") or "avx512f" in _cpu_flags()))


#: The entropy model's parameters: under straight-through rounding the distortion has no gradient in them (y_hat =
#: y + an offset that carries no gradient, whatever the means), so training only these minimises the bits alone.
ENTROPY_MODEL_PREFIXES = ("h_a.", "h_s.", "entropy_bottleneck.", "context.")


#: What the ``psnr`` metric may train: modules after the entropy decoder, which change the pictures and never the bits.
DECODER_ONLY = ("refine_head.", "jct_1.", "synthesis_1.", "jct_2.", "synthesis_2.")


def check_metric(model: LDMIC, metric: str) -> None:
    """``optim.metric: psnr`` (-PSNR per group, every rate point and every kind of image weighing the same in dB)
    only where nothing that codes the bits trains: ValueError naming the first parameter that does."""
    if metric != "psnr":
        return
    coding = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(DECODER_ONLY)]
    if coding:
        raise ValueError(f"optim.metric psnr has no rate term, but {coding[0]} trains and moves the bits; set "
                         f"optim.train_only to decoder modules ({', '.join(DECODER_ONLY)}) or use metric mse")


def train_only(model: LDMIC, prefixes: tuple[str, ...], frozen: tuple[str, ...] = ()) -> bool:
    """``optim.train_only`` and ``optim.frozen``: freeze every parameter whose name starts with none of ``prefixes``
    (none when empty) or with one of ``frozen``; the entropy bottleneck's quantiles follow their aux loss whenever
    its density trains (else they stay, and with them the medians z is rounded around: a run of the refinement head
    alone keeps every bit of its starting weights).
    True when only the entropy model trains: the run may then skip the synthesis (``rd_loss`` of a rate-only
    forward)."""
    if not prefixes and not frozen:
        return False
    names = [n for n, _ in model.named_parameters()]
    for key, given in (("train_only", prefixes), ("frozen", frozen)):
        unknown = [p for p in given if not any(n.startswith(p) for n in names)]
        if unknown:
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"optim.{key}: {unknown} name no parameter of {model.spec.name} (its modules: "
                             f"{', '.join(tops)})")
    for name, param in model.named_parameters():
        param.requires_grad_((not prefixes or name.startswith(tuple(prefixes))) and not name.startswith(tuple(frozen)))
    if any(p.requires_grad for n, p in model.entropy_bottleneck.named_parameters() if not n.endswith("quantiles")):
        model.entropy_bottleneck.quantiles.requires_grad_(True)  # they follow the density they bound (aux loss)
    return all(n.startswith(ENTROPY_MODEL_PREFIXES) for n, p in model.named_parameters() if p.requires_grad)


def param_groups(model: LDMIC, gain_lr_scale: float) -> list[dict]:
    """The main optimizer's groups: every trainable parameter but the entropy bottleneck's quantiles (the aux
    optimizer's); with a gain_lr_scale other than 1 the rate gains form a group of their own whose lr is scaled."""
    named = [(n, p) for n, p in model.named_parameters() if not n.endswith("quantiles") and p.requires_grad]
    if gain_lr_scale == 1.0:
        return [{"params": [p for _, p in named]}]
    if gain_lr_scale <= 0:
        raise ValueError(f"optim.gain_lr_scale must be > 0, got {gain_lr_scale}")
    return [{"params": [p for n, p in named if not n.startswith("gains.")]},
            {"params": [p for n, p in named if n.startswith("gains.")], "lr_scale": gain_lr_scale}]


def use_bf16(amp: str, device: str) -> bool:
    """optim.amp: bf16 autocast where asked for (auto: on CUDA, and on a CPU that multiplies bf16 natively)."""
    if amp not in ("off", "bf16", "auto"):
        raise ValueError(f"optim.amp must be off, bf16 or auto, got {amp!r}")
    return amp == "bf16" or (amp == "auto" and (device.startswith("cuda") or cpu_bf16_native()))


def training_lambdas(cfg: RunConfig, num_rates: int, default: tuple[float, ...]) -> tuple[float, ...]:
    """The lambda of each rate point: ``optim.lambdas`` when set (one per rate point, increasing), else the model's."""
    lambdas = cfg.optim.lambdas or default
    if len(lambdas) != num_rates or any(b <= a for a, b in zip(lambdas, lambdas[1:])) or min(lambdas) <= 0:
        raise ValueError(f"optim.lambdas must be {num_rates} positive increasing values (one per rate point), "
                         f"got {list(lambdas)}")
    return tuple(float(x) for x in lambdas)


def make_batches(cfg: RunConfig, num_rates: int, seed: int):
    """An endless iterator of Batch: the configured sources mixed by weight, prepared by cfg.optim.workers."""
    sources = (cfg.data, *cfg.extra_data)
    batchers = [GroupBatcher(make_source(d, cfg.seed), cfg.optim.batch_size, cfg.optim.crop, d.k_min, d.k_max,
                             num_rates, seed=seed + i, rates=cfg.optim.rates) for i, d in enumerate(sources)]
    mixed = MixedBatcher(batchers, [d.weight for d in sources], seed=seed)
    workers = cfg.optim.workers
    if workers == 0:
        mixed.reseed(seed)
        return iter(mixed.next, None)
    loader = torch.utils.data.DataLoader(BatchStream(mixed, seed), batch_size=None, num_workers=workers,
                                         pin_memory=torch.cuda.is_available(), prefetch_factor=4,
                                         persistent_workers=True)
    return iter(loader)


def init_weights(model: LDMIC, source: Path) -> None:
    """Start from other weights (another run's pieces, an exported file); the context model may differ in kind.

    Tensors whose name and shape match are taken, except the masked context convolution's mask: it belongs to the
    architecture (checkerboard or causal raster), so a fast <-> autoregressive start keeps the model's own and the
    layer re-masks the copied weights. CDF tables of an exported file are taken whatever their size. A refinement head
    the source lacks (head-less weights into ``ldmic-fast-lite-r``) keeps its zero start. Anything else missing is an
    error.
    """
    state = load_state(source)
    own = model.state_dict()
    taken = {k: v for k, v in state.items()
             if k in own and not k.endswith(".mask") and (own[k].shape == v.shape or k.endswith(CDF_TABLES))}
    taken.update({k: v for k, v in own.items() if k.endswith(".mask")})
    # a refinement head the source lacks starts as initialised, adding nothing (refine_head.py)
    taken.update({k: v for k, v in own.items() if k.startswith("refine_head.") and k not in taken})
    missing = sorted(set(own) - set(taken))
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} tensors of {model.spec.name} (e.g. {missing[0]})")
    model.load_state_dict(taken, strict=True)


def start_from(model: LDMIC, init_from: str, lambdas: tuple[float, ...], progress: bool = True) -> None:
    """``init_from``: MVIC weights (``init_weights``) or a CompressAI source such as ``compressai:mbt2018:4``
    (``compressai_init``: the single-image model mapped onto ours, the rate point nearest its lambda coding like it)."""
    source = parse_source(init_from)
    if source is None:
        init_weights(model, Path(init_from))
        return
    done = init_from_compressai(model, source, lambdas, progress)
    print(f"init_from {source}: {done.mapped} tensors mapped; rate point {done.rate_index} (lambda "
          f"{lambdas[done.rate_index]:g}) starts as {source.architecture} quality {source.quality} (lambda "
          f"{done.lambda_source:.0f}), both JCTs as the identity", file=sys.stderr)


def train(cfg: RunConfig, run_dir: Path, device: str = "cpu", max_minutes: float | None = None,
          progress: bool = True, stop_at: float | None = None) -> int:
    """Train until optim.max_steps or the time budget; checkpoints in run_dir. Returns the last step.

    Checkpoints every ``checkpoint_every`` steps and, with ``checkpoint_minutes``, whenever that much time has
    passed since the last one, so a process killed at any moment loses at most that much work; a SIGTERM or SIGINT
    ends the run after the current step with a checkpoint (``StopSignals``). ``stop_at`` (Unix
    time) ends the run at that moment whatever its start-up cost; the time-budgeted lr decays then use the time left
    when training starts as the budget."""
    torch.manual_seed(cfg.seed)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    spec = spec_by_name(cfg.model)
    model = LDMIC(spec)
    resuming = (run_dir / "checkpoint.json").is_file()
    rate_lambdas = training_lambdas(cfg, spec.num_rates, spec.lambdas)
    if cfg.init_from and not resuming:
        start_from(model, cfg.init_from, rate_lambdas, progress)
    if cfg.jct_identity and not resuming:
        for jct in (model.jct_1, model.jct_2):
            zero_refine(jct)
    model = model.to(device).train()
    if use_channels_last(cfg.optim.channels_last, device):
        model = model.to(memory_format=torch.channels_last)
    rate_only = train_only(model, cfg.optim.train_only, cfg.optim.frozen)
    check_metric(model, cfg.optim.metric)
    if cfg.optim.ar_two_pass:
        if spec.context is not ContextModel.AUTOREGRESSIVE:
            raise ValueError(f"optim.ar_two_pass is for autoregressive models; {spec.name} is {spec.context.value}")
        model.context.two_pass = True
    if rate_only:
        print(f"optim.train_only {list(cfg.optim.train_only)}, frozen {list(cfg.optim.frozen)}: the entropy model "
              "alone trains, on the bits (no synthesis)", file=sys.stderr)
    aux_params = [p for n, p in model.named_parameters() if n.endswith("quantiles") and p.requires_grad]
    groups = param_groups(model, cfg.optim.gain_lr_scale)
    main_params = [p for g in groups for p in g["params"]]
    opt = torch.optim.Adam(groups, lr=cfg.optim.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=cfg.optim.aux_lr) if aux_params else None
    optimizers = {"main": opt} if aux_opt is None else {"main": opt, "aux": aux_opt}
    ema = WeightsEMA(model, cfg.optim.ema) if cfg.optim.ema else None
    step = load_checkpoint(run_dir, model, optimizers, ema) if resuming else 0
    old_ladder = starting_ladder(cfg, run_dir if resuming else None, spec.lambdas)
    if follow_ladder(model, old_ladder, rate_lambdas, ema.averaged() if ema is not None else None):
        print(f"rate gains moved from lambdas {list(old_ladder)} to {list(rate_lambdas)} (log-linear per channel)",
              file=sys.stderr)
    batches = make_batches(cfg, spec.num_rates, seed=cfg.seed + step)
    lambdas = torch.tensor(rate_lambdas, device=device)
    amp = use_bf16(cfg.optim.amp, device)
    if stop_at is not None:
        max_minutes = min(max_minutes or math.inf, max(0.0, stop_at - time.time()) / 60)
    deadline = time.monotonic() + 60 * max_minutes if max_minutes is not None else math.inf
    log_path = run_dir / "log.csv"
    new_log = not log_path.is_file()
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = last_checkpoint = time.monotonic()
    skipped = 0
    bar = tqdm(total=cfg.optim.max_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    with open(log_path, "a", newline="") as log_file, StopSignals() as stop:
        log = csv.writer(log_file)
        if new_log:
            log.writerow(["step", "loss", "bpp", "mse", "psnr_db", "aux", "lr", "seconds", "k"])
        while step < cfg.optim.max_steps and time.monotonic() < deadline and not stop.requested:
            decays = sum(step >= m for m in cfg.optim.lr_milestones)
            if max_minutes:  # time-budgeted runs (short GPU leases) decay by the share of the budget used
                used = (time.monotonic() - t0) / (60 * max_minutes)
                decays += sum(used >= f for f in cfg.optim.lr_time_fractions)
            lr = cfg.optim.lr * cfg.optim.lr_gamma ** decays
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            batch = next(batches)
            x = batch.images.to(device, non_blocking=True)
            rate = batch.rate.to(device, non_blocking=True)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x, rate, synthesize=not rate_only)
            loss, bpp, mse = rd_loss(out, x, rate, lambdas, cfg.optim.metric)
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                skipped += 1  # a non-finite batch is skipped and counted, never applied
                if skipped > 100:
                    raise FloatingPointError("more than 100 non-finite losses; lower optim.lr or set optim.amp: off")
                continue
            loss.backward()
            torch.nn.utils.clip_grad_norm_(main_params, cfg.optim.clip)
            opt.step()
            aux = model.aux_loss()
            if aux_opt is not None:
                aux_opt.zero_grad(set_to_none=True)
                aux.backward()
                aux_opt.step()
            if ema is not None:
                ema.update()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == 1:
                loss, bpp, mse, aux = (float(t.detach()) for t in (loss, bpp, mse, aux))
                psnr = -10 * math.log10(max(mse, 1e-10))
                log.writerow([step, f"{loss:.5f}", f"{bpp:.5f}", f"{mse:.6f}", f"{psnr:.3f}", f"{aux:.3f}",
                              f"{lr:.3g}", f"{time.monotonic() - t0:.1f}", x.shape[1]])
                log_file.flush()
                bar.set_postfix(loss=f"{loss:.4f}", bpp=f"{bpp:.3f}", psnr=f"{psnr:.2f}", K=x.shape[1])
            due = cfg.checkpoint_minutes and time.monotonic() - last_checkpoint >= 60 * cfg.checkpoint_minutes
            if step % cfg.checkpoint_every == 0 or due:
                save_checkpoint(run_dir, step, model, optimizers, to_dict(cfg), ema)
                last_checkpoint = time.monotonic()
    bar.close()
    if skipped:
        print(f"skipped {skipped} batches with a non-finite loss", file=sys.stderr)
    save_checkpoint(run_dir, step, model, optimizers, to_dict(cfg), ema)
    return step


def _run_model_name(run_dir: Path) -> str:
    if (run_dir / "checkpoint.json").is_file():
        return json.loads((run_dir / "checkpoint.json").read_text())["config"]["model"]
    if (run_dir / PIECES_INDEX).is_file():
        return json.loads((run_dir / PIECES_INDEX).read_text())["model"]
    raise FileNotFoundError(f"{run_dir} is neither a run folder (checkpoint.json) nor a pieces folder ({PIECES_INDEX})")


def _run_info(run_dir: Path) -> dict:
    """step and config of a run folder (checkpoint.json) or of a pieces folder that carried them; {} if neither."""
    for name in ("checkpoint.json", PIECES_INDEX):
        if (run_dir / name).is_file():
            info = json.loads((run_dir / name).read_text())
            return {"step": info.get("step", "?"), "config": info.get("config", {})}
    return {}


def export_run(run_dir: Path, out: Path, fp16_kernels: bool = False) -> str:
    """Export a run's (or a pieces folder's) weights as a shipped-weights file (CDF tables updated); its sha256.

    Beside it, ``<out>.record.json`` holds the registry record (name, file, sha256, model, metric, recipe) to add to
    ``shared/codec/weights/records.json`` once the weights are measured (mvic-eval fills ``measured``).
    """
    model = LDMIC(spec_by_name(_run_model_name(run_dir)))
    model.load_state_dict(load_state(run_dir), strict=True)
    digest = export_weights(model.eval(), out, fp16_kernels=fp16_kernels)
    info = _run_info(run_dir)
    config = info.get("config", {})
    metric = config.get("optim", {}).get("metric", "mse")
    write_sidecar_record(out, digest, model.spec.name, "mse" if metric == "psnr" else metric,
                         f"mvic-train run {run_dir.name}, step {info.get('step', '?')}, config {json.dumps(config)}")
    return digest


def export_pieces(run_dir: Path, out_dir: Path, max_mib: float = 16) -> list[Path]:
    """The run's model weights in safetensors pieces of at most max_mib MiB (resume elsewhere with init_from)."""
    run = _run_info(run_dir)
    info = {"model": _run_model_name(run_dir), "step": run.get("step"), "config": run.get("config", {})}
    return save_pieces(load_state(run_dir), out_dir, int(max_mib * (1 << 20)), info)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvic-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run folder: checkpoint, log.csv (resumed if present)")
    p.add_argument("--config", type=Path, help="YAML config (defaults: RunConfig in config.py)")
    p.add_argument("--stages", type=Path, nargs="+", metavar="CONFIG",
                   help="instead of --config: train these configs in order, each from the one before, in "
                        "RUN/<i>-<config stem>/; run again, it resumes in the stage it stopped in")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--init-from", metavar="WEIGHTS",
                   help="start a new run from these weights (file, pieces folder or run folder, or a CompressAI "
                        "source: compressai:mbt2018:4, a zoo .pth.tar); overrides init_from")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    p.add_argument("--max-steps", type=int, metavar="N", help="overrides optim.max_steps (train to step N)")
    p.add_argument("--lr", type=float, help="overrides optim.lr (e.g. 1e-5 for a branch that anneals a run's "
                                            "weights: scripts/campaign.sh anneal)")
    p.add_argument("--stop-at", type=float, metavar="UNIX_TIME",
                   help="stop (with a checkpoint) at this moment, start-up included (e.g. $(( $(date +%%s) + 480 )))")
    p.add_argument("--export", type=Path, metavar="FILE", help="export the run's checkpoint as weights and exit")
    p.add_argument("--fp16-kernels", action="store_true",
                   help="with --export: store convolution kernels in float16 (half the size; still bit-exact)")
    p.add_argument("--export-pieces", type=Path, metavar="DIR",
                   help="write the run's model weights as safetensors pieces of at most --piece-mib MiB and exit")
    p.add_argument("--piece-mib", type=float, default=16, help="piece size limit for --export-pieces (MiB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--validate-config", action="store_true", help="check the config and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.export:
        digest = export_run(args.run, args.export, args.fp16_kernels)
        print(f"{args.export}: sha256 {digest}")
        return 0
    if args.export_pieces:
        for path in export_pieces(args.run, args.export_pieces, args.piece_mib):
            print(f"{path}: {path.stat().st_size} bytes")
        return 0
    if args.stages:
        return _main_stages(args)
    try:
        cfg = load_config(args.config)
    except (ValueError, OSError) as exc:
        print(f"mvic-train: config error: {exc}", file=sys.stderr)
        return 2
    if args.init_from:
        cfg = replace(cfg, init_from=args.init_from)
    for value, name in ((args.lr, "--lr"), (args.max_steps, "--max-steps")):
        if value is not None and not (math.isfinite(value) and value > 0):
            print(f"mvic-train: {name} must be a positive number, not {value}", file=sys.stderr)
            return 2
    if args.lr is not None:
        cfg = replace(cfg, optim=replace(cfg.optim, lr=args.lr))
    if args.max_steps is not None:
        cfg = replace(cfg, optim=replace(cfg.optim, max_steps=args.max_steps))
    try:
        parse_source(cfg.init_from)  # a malformed CompressAI source fails here, before any data is read
    except ConfigError as exc:
        print(f"mvic-train: config error: {exc}", file=sys.stderr)
        return 2
    if args.validate_config:
        print("config ok")
        return 0
    try:
        step = train(cfg, args.run, args.device, args.max_minutes, progress=not args.quiet, stop_at=args.stop_at)
    except WeightsError as exc:  # init_from that cannot be used: missing, unreachable, of other shapes
        print(f"mvic-train: {exc}", file=sys.stderr)
        return 2
    print(f"stopped at step {step}; checkpoint in {args.run}")
    return 0


def _main_stages(args: argparse.Namespace) -> int:
    """mvic-train --stages: the configs checked whole before any training, then trained in order."""
    refused = [name for name, given in (("--config", args.config), ("--lr", args.lr), ("--max-steps", args.max_steps))
               if given is not None]
    if refused:
        print(f"mvic-train: {', '.join(refused)} cannot go with --stages (each stage's config says its own)",
              file=sys.stderr)
        return 2
    try:
        stages = plan_stages(args.stages, args.run)
        parse_source(args.init_from or stages[0].config.init_from)  # a malformed CompressAI source fails here
    except (ValueError, OSError, ConfigError) as exc:
        print(f"mvic-train: config error: {exc}", file=sys.stderr)
        return 2
    if args.validate_config:
        print(f"config ok: {len(stages)} stages")
        return 0
    try:
        short = run_stages(stages, train, args.device, args.max_minutes, progress=not args.quiet,
                           stop_at=args.stop_at, init_from=args.init_from)
    except WeightsError as exc:
        print(f"mvic-train: {exc}", file=sys.stderr)
        return 2
    if short is None:
        print(f"all {len(stages)} stages done; the last one's checkpoint is in {stages[-1].run}")
    else:
        print(f"stopped in stage {short.index} of {len(stages)} at step {checkpoint_step(short.run)} of "
              f"{short.config.optim.max_steps}; the same command resumes it ({short.run})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
