"""Codec speed: encode time per view split by stage, and joint decode time for K views.

    .venv/bin/python benchmarks/codec_speed.py [--size 1080x1920] [--models ...] [--threads 1 2] [--views 2 7]

Weights are random (speed does not depend on training; bits do). Encode stages: analysis (g_a), hyper (h_a, and
h_s in exact integer form), entropy parameters (context model + EP, exact), rANS (symbol coding incl. list
conversion). Decode: entropy decoding (z, h_s, context, rANS) and synthesis (JCT + g_s), all K views of a group.
Prints a Markdown table; one warm-up run precedes each timed run. CPU only: the GPU path (entropy decoding on CPU
workers, synthesis on the GPU, synchronized) is benchmarks/gpu_decode.py.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mvic.shared.codec import fixedpoint
from mvic.shared.codec.entropy_coding import EncodeSession
from mvic.shared.codec.fixedpoint import ExactOptions, exact_mode, quantize_sequential, run_layers
from mvic.shared.codec.gains import RateGains
from mvic.shared.codec.images import to_padded_tensor
from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import load_model
from mvic.shared.model_table import spec_by_name


class _TimedEncodeSession(EncodeSession):
    def __init__(self, batch):
        super().__init__(batch)
        self.seconds = 0.0

    def code(self, *args):
        t0 = time.perf_counter()
        out = super().code(*args)
        self.seconds += time.perf_counter() - t0
        return out


def blocky_image(h, w, seed=0):
    """A test view with 16-pixel blocks and noise (speed does not depend on content; bits do)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
    img = np.kron(coarse, np.ones((16, 16, 1), np.float32))[:h, :w] + rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@torch.no_grad()
def encode_stages(model: LDMIC, image: np.ndarray) -> dict[str, float]:
    rate = torch.tensor([2])
    t = {}
    t0 = time.perf_counter()
    x = to_padded_tensor(image)
    y = model.g_a(x) * RateGains.pick(model.gains.y_gain, rate)
    t["analysis"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    z = model.h_a(y) * RateGains.pick(model.gains.z_gain, rate)
    t_ha = time.perf_counter() - t0
    session = _TimedEncodeSession(1)
    t0 = time.perf_counter()
    model.latent_codec.code(y, z, rate, session, ExactOptions())
    t_code = time.perf_counter() - t0
    stream = session.finish()[0]
    with exact_mode():
        t0 = time.perf_counter()  # h_s alone, to split the exact part
        z_in = torch.zeros(1, model.spec.n, *z.shape[-2:], dtype=torch.float64)
        run_layers(quantize_sequential(model.h_s), z_in, ExactOptions())
        t_hs = time.perf_counter() - t0
    t["hyper"] = t_ha + t_hs
    t["rans"] = session.seconds
    t["entropy_params"] = max(0.0, t_code - session.seconds - t_hs)
    t["total"] = sum(t.values())
    t["bytes"] = len(stream)
    return t


@torch.no_grad()
def decode_time(model: LDMIC, views, opts=ExactOptions()) -> tuple[float, float]:
    t0 = time.perf_counter()
    lat = model._decode_latents(views, opts)
    t_entropy = time.perf_counter() - t0
    rate = torch.tensor([v.header.rate_index for v in views])
    t0 = time.perf_counter()
    y_hat = fixedpoint.from_fixed(lat.y_hat_fx).float() * RateGains.pick(model.gains.y_inverse, rate)
    model._synthesize(y_hat, 1, len(views))
    return t_entropy, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1080x1920", help="HxW of each view (default %(default)s)")
    p.add_argument("--models", nargs="+", default=["ldmic-fast-lite", "ldmic-lite", "ldmic-fast", "ldmic"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--views", nargs="+", type=int, default=[2, 7])
    p.add_argument("--weights", nargs="+", type=Path, default=[],
                   help="time these weights files (e.g. shared/codec/weights/*.safetensors) instead of random "
                        "weights of --models; rows are named by file")
    args = p.parse_args(argv)
    h, w = map(int, args.size.split("x"))
    print(f"# codec speed, {h}x{w} per view, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads available; GPU decoding: benchmarks/gpu_decode.py\n")
    print("| model | enc threads | analysis s | hyper s | entropy params s | rANS s | encode total s |")
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    models = {}
    for name in [path.stem for path in args.weights] or args.models:
        if args.weights:
            model = load_model(next(path for path in args.weights if path.stem == name))
        else:
            model = LDMIC(spec_by_name(name)).eval()
            model.update(force=True)
            model.weights_hash = b"\0" * 8
        models[name] = model
        small = blocky_image(128, 128)
        encode_stages(model, small)  # warm-up
        for threads in args.threads:
            torch.set_num_threads(threads)
            t = encode_stages(model, blocky_image(h, w))
            print(f"| {name} | {threads} | {t['analysis']:.2f} | {t['hyper']:.2f} | {t['entropy_params']:.2f} | "
                  f"{t['rans']:.2f} | {t['total']:.2f} |", flush=True)
    torch.set_num_threads(max(args.threads))
    print("\n| model | K views | entropy decode s | synthesis s | decode total s | per view s |")
    print("|---|---|---|---|---|---|")
    for name, model in models.items():
        views = [model.compress_view(blocky_image(h, w, seed=k), 2, camera_id=f"C{k + 1}")
                 for k in range(max(args.views))]
        for k in args.views:
            decode_time(model, views[:1])  # warm-up
            te, ts = decode_time(model, views[:k])
            print(f"| {name} | {k} | {te:.2f} | {ts:.2f} | {te + ts:.2f} | {(te + ts) / k:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
