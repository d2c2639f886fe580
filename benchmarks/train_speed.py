"""Training steps per hour on this machine's CPU for each way of running a step (issue 10, item 4).

    .venv/bin/python benchmarks/train_speed.py [--model ldmic-fast-lite] [--batch 4] [--views 2] [--steps 6]

Times the full training step (forward, RD loss, backward, clipping, Adam, aux step) on random images, after two
warm-up steps, for: fp32; bf16 autocast (the transforms and JCT in bfloat16, the entropy model in float32);
channels-last memory format; both. Prints the CPU's name, whether it has AMX / AVX-512-BF16 (native bf16 matrix
units), and a Markdown table with seconds per step and steps per hour. Data preparation is not timed (in training
it runs ahead in DataLoader workers).
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
               steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, rate)
        loss, _, _ = rd_loss(out, x, rate, lambdas, "mse")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.aux_loss().backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ldmic-fast-lite")
    p.add_argument("--batch", type=int, default=4, help="groups per batch")
    p.add_argument("--views", type=int, default=2, help="views per group")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=6, help="timed steps per option (median)")
    args = p.parse_args(argv)
    spec = spec_by_name(args.model)
    torch.manual_seed(0)
    x = torch.rand(args.batch, args.views, 3, args.crop, args.crop)
    rate = torch.arange(args.batch) % spec.num_rates
    lambdas = torch.tensor(spec.lambdas)
    print(f"# training step speed, {cpu_name()}, native bf16 (AMX or AVX-512-BF16): {cpu_bf16_native()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"# {args.model}, {args.batch} groups x {args.views} views of {args.crop}x{args.crop}\n")
    print("| option | s/step | steps/h |")
    print("|---|---|---|")
    for name, bf16, channels_last in (("fp32", False, False), ("bf16 autocast", True, False),
                                      ("channels-last", False, True), ("bf16 + channels-last", True, True)):
        torch.manual_seed(0)
        model = LDMIC(spec).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        seconds = time_steps(model, x, rate, lambdas, bf16, args.steps)
        print(f"| {name} | {seconds:.2f} | {3600 / seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
