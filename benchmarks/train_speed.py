"""Training steps per hour on this machine's CPU for each way of running a step (issue 10, item 4).

    .venv/bin/python benchmarks/train_speed.py [--model ldmic-fast-lite] [--batch 4] [--views 2] [--steps 6]

Times the full training step (forward, RD loss, backward, clipping, Adam, aux step) on random images, after two
warm-up steps, for: fp32; bf16 autocast (the transforms and JCT in bfloat16, the entropy model in float32);
channels-last memory format; both; both with the model's forward compiled by ``torch.compile`` (inductor; the
first step's compile time is printed apart, it is paid once per process). Prints the CPU's name, whether it has
AMX / AVX-512-BF16 (native bf16 matrix units), and a Markdown table with seconds per step and steps per hour. Data
preparation is not timed (in training it runs ahead in DataLoader workers).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from mvic.shared.codec.model import LDMIC
from mvic.shared.model_table import spec_by_name
from mvic.tools.training.train import cpu_bf16_native, rd_loss


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_steps(model: LDMIC, x: torch.Tensor, rate: torch.Tensor, lambdas: torch.Tensor, bf16: bool,
               steps: int, compiled: bool = False) -> tuple[float, float]:
    """(median seconds per step after two warm-up steps, seconds of the first step)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    forward = torch.compile(model) if compiled else model
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(x, rate)
        loss, _, _ = rd_loss(out, x, rate, lambdas, "mse")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.aux_loss().backward()
        times.append(time.perf_counter() - t0)
    first, timed = times[0], sorted(times[2:])
    return timed[len(timed) // 2], first


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ldmic-fast-lite")
    p.add_argument("--batch", type=int, default=4, help="groups per batch")
    p.add_argument("--views", type=int, default=2, help="views per group")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=6, help="timed steps per option (median)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row (its compile takes minutes)")
    args = p.parse_args(argv)
    spec = spec_by_name(args.model)
    torch.manual_seed(0)
    x = torch.rand(args.batch, args.views, 3, args.crop, args.crop)
    rate = torch.arange(args.batch) % spec.num_rates
    lambdas = torch.tensor(spec.lambdas)
    print(f"# training step speed, {cpu_name()}, native bf16 (AMX or AVX-512-BF16): {cpu_bf16_native()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"# {args.model}, {args.batch} groups x {args.views} views of {args.crop}x{args.crop}\n")
    print("| option | s/step | steps/h | first step s |")
    print("|---|---|---|---|")
    for name, bf16, channels_last, compiled in (
            ("fp32", False, False, False), ("bf16 autocast", True, False, False),
            ("channels-last", False, True, False), ("bf16 + channels-last", True, True, False),
            ("bf16 + channels-last + torch.compile", True, True, True)):
        if compiled and args.no_compile:
            continue
        torch.manual_seed(0)
        model = LDMIC(spec).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        try:
            seconds, first = time_steps(model, x, rate, lambdas, bf16, args.steps, compiled)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot compile here is a result, not a crash
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc)[:120]!r} | | |", flush=True)
            continue
        print(f"| {name} | {seconds:.2f} | {3600 / seconds:.0f} | {first:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
