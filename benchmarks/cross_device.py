"""Cross-device decoding with real weights: encode on the CPU, decode on another device, count desyncs and time it.

    python benchmarks/cross_device.py --weights W.safetensors [W2 ...] --device cuda [--images 200] [--size 1080x1920]

For each weights file: ``--images`` views (synthetic-plaza views at 288x512, seeds apart from training) are encoded
on the CPU with one thread, unpacked from real packets and entropy-decoded on ``--device``; a view whose latent
symbols differ from the CPU's (or whose symbol CRC fails) counts as a desync. The reconstructions of a sample are
compared too (PSNR of device vs CPU synthesis: float networks, so close but not bit-identical across devices).
Then one joint decode of K = 2 and K = 7 views at ``--size`` is timed on the device (entropy decoding and synthesis,
with a warm-up and CUDA synchronisation). Prints a Markdown table. The server's real split (entropy decoding on CPU
workers, synthesis batched on the GPU) is timed by benchmarks/gpu_decode.py.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from mvic.shared.bitstream import pack, unpack
from mvic.shared.codec.fixedpoint import ExactOptions, from_fixed
from mvic.shared.codec.gains import RateGains
from mvic.shared.codec.images import psnr
from mvic.shared.codec.registry import load_model
from mvic.shared.errors import DesyncError
from mvic.shared.scene import Scene, SceneConfig


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _views(n: int, h: int, w: int) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    seed = 5000
    while len(out) < n:
        out.extend(Scene(SceneConfig(seed=seed, cameras=7, height=h, width=w)).render(0))
        seed += 1
    return out[:n]


@torch.no_grad()
def check(weights: str, device: str, images: int, size: tuple[int, int]) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the camera's encoder: one thread
    enc = load_model(weights)
    dec = load_model(weights, device=device)
    desync = 0
    worst_psnr = float("inf")
    for i, im in enumerate(_views(images, 288, 512)):
        view = unpack(pack(enc.compress_view(im, i % enc.spec.num_rates, sequence=i + 1)))
        try:
            same = torch.equal(dec.decode_latents([view]).cpu(), enc.decode_latents([view]))
        except DesyncError:
            same = False
        desync += not same
        if i < 10:
            worst_psnr = min(worst_psnr, psnr(dec.decompress([view])[0].image, enc.decompress([view])[0].image))
    torch.set_num_threads(threads)
    h, w = size
    group = Scene(SceneConfig(seed=6000, cameras=7, height=h, width=w)).render(0)
    packets = [unpack(pack(enc.compress_view(v, 2, camera_id=f"C{k + 1}", sequence=1))) for k, v in enumerate(group)]
    times = {}
    for k in (2, 7):
        views = packets[:k]
        for _ in range(2):  # warm-up, then timed
            _sync(device)
            t0 = time.perf_counter()
            lat = dec._decode_latents(views, ExactOptions())
            _sync(device)
            t1 = time.perf_counter()
            rate = torch.tensor([v.header.rate_index for v in views], device=lat.y_hat_fx.device)
            y_hat = from_fixed(lat.y_hat_fx).float() * RateGains.pick(dec.gains.y_inverse, rate)
            dec._synthesize(y_hat, 1, k)
            _sync(device)
            t2 = time.perf_counter()
        times[k] = (t1 - t0, t2 - t1)
    return {"desync": desync, "images": images, "psnr_vs_cpu": worst_psnr, "times": times, "model": enc.spec.name}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", default="1080x1920")
    args = p.parse_args(argv)
    size = tuple(int(s) for s in args.size.split("x"))
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor()
    print(f"encode: CPU ({platform.machine()}; 1 thread for the desync check, {torch.get_num_threads()} for the "
          f"timed group); decode: {args.device} ({name}); torch {torch.__version__}")
    print("| model | views | desyncs | worst PSNR device vs CPU synthesis | "
          f"K=2 entropy+synthesis s | K=7 entropy+synthesis s ({args.size}) |")
    print("|---|---|---|---|---|---|")
    for w in args.weights:
        r = check(w, args.device, args.images, size)
        t2, t7 = r["times"][2], r["times"][7]
        print(f"| {r['model']} | {r['images']} | {r['desync']} | {r['psnr_vs_cpu']:.1f} dB | "
              f"{t2[0]:.2f}+{t2[1]:.2f} | {t7[0]:.2f}+{t7[1]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
