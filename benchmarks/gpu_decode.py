"""GPU joint decoding as the server runs it: entropy decoding on CPU workers, synthesis on the GPU.

    python benchmarks/gpu_decode.py [--weights W] [--size 1080x1920] [--views 2 7] [--batch 1 4] [--device cuda]

For each K: K views encoded on the CPU (real bitstreams of the given weights, default the shipped default model),
then (1) entropy decoding of one group on the CPU with all threads, and of ``--workers`` groups at once on as many
worker threads (the server's stage 1); (2) synthesis of B groups in one call on the device in fp32, fp32 with TF32
and bf16 autocast, timed with a synchronize after each call, median of ``--repeat`` calls after a warm-up. Prints
groups/s of each stage and the largest difference from the CPU's reconstruction in grey levels.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch

from codec_speed import blocky_image  # this folder's script (python benchmarks/gpu_decode.py)
from mvic.shared.codec.registry import default_weights, load_model


def _timed(fn, repeat: int, sync: bool) -> float:
    fn()  # warm-up (cuDNN autotuning, allocations)
    times = []
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _pixels(decoded) -> np.ndarray:
    return np.stack([view.image for group in decoded for view in group]).astype(np.int16)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="weights file (default: the shipped weights of --model)")
    p.add_argument("--model", default="ldmic-fast-lite")
    p.add_argument("--size", default="1080x1920", help="HxW of each view")
    p.add_argument("--views", nargs="+", type=int, default=[2, 7])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 4], help="groups per synthesis call")
    p.add_argument("--workers", type=int, default=4, help="entropy-decoding worker threads (the server's)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    h, w = map(int, args.size.split("x"))
    source = args.weights or default_weights(args.model)
    cpu = load_model(source)
    dev = load_model(source, device=args.device)
    sync = args.device.startswith("cuda")
    name = getattr(source, "name", source)
    gpu = torch.cuda.get_device_name(args.device) if sync else "cpu"
    print(f"# GPU decode, {name}, {h}x{w} per view, {gpu}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, {args.workers} entropy workers\n")
    with ThreadPoolExecutor(4) as pool:
        views = list(pool.map(lambda k: cpu.compress_view(blocky_image(h, w, k), 2, camera_id=f"C{k + 1}"),
                              range(max(args.views))))
    print("| K | B | synthesis | entropy decode 1 group s | entropy groups/s (workers) | synthesis s | "
          "synthesis groups/s | max diff vs CPU (grey levels) |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    threads = torch.get_num_threads()
    for k in args.views:
        group = views[:k]
        t_entropy = _timed(lambda: cpu.entropy_decode(group), 1, False)
        torch.set_num_threads(max(1, threads // args.workers))  # the server's workers share the cores
        with ThreadPoolExecutor(args.workers) as pool:
            t0 = time.perf_counter()
            latents = list(pool.map(lambda _: cpu.entropy_decode(group), range(args.workers)))
            t_workers = time.perf_counter() - t0
        torch.set_num_threads(threads)
        reference = _pixels(cpu.synthesize(latents[:1]))
        for b in args.batch:
            batch = [latents[i % len(latents)] for i in range(b)]
            for mode in ("fp32", "tf32", "bf16"):
                torch.backends.cudnn.allow_tf32 = mode == "tf32"
                torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
                ctx = torch.autocast("cuda", dtype=torch.bfloat16) if mode == "bf16" else nullcontext()

                def synth(batch=batch, ctx=ctx):
                    with ctx:
                        return dev.synthesize(batch)

                t_synth = _timed(synth, args.repeat, sync)
                diff = int(np.abs(_pixels(synth()[:1]) - reference).max())
                print(f"| {k} | {b} | {mode} | {t_entropy:.2f} | {args.workers / t_workers:.2f} | {t_synth:.4f} | "
                      f"{b / t_synth:.1f} | {diff} |", flush=True)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
