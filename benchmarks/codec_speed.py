"""Codec speed: encode time per view split by stage, and joint decode time for K views.

    .venv/bin/python benchmarks/codec_speed.py [--size 1080x1920] [--models ...] [--threads 1 2] [--views 2 7]
        [--encode-paths reference fp32 bf16] [--repeat 3] [--no-decode]

Weights are random (speed does not depend on training; bits do). Encode stages: analysis (g_a), hyper (h_a, and
h_s in exact integer form), entropy parameters (context model + EP, exact), rANS (symbol coding incl. list
conversion). Encode paths, timed side by side (interleaved, ``--repeat`` times, medians): ``reference`` = the
modules as trained (float32 g_a/h_a, torch's float64 convolution for the exact part), ``fp32`` / ``bf16`` = the
camera's fast path (``transforms.encoder_form`` in that precision, ``Backend.TAPS`` for the exact part; the node's
``encode.precision: auto`` is bf16 where the CPU has native bf16, fp32 elsewhere). Decode: entropy decoding (z, h_s,
context, rANS) and synthesis (JCT + g_s), all K views of a group, timed side by side (interleaved,
``--decode-repeat`` times, medians) for each exact backend (``--decode-backends``), number of threads sharing the
views (``--entropy-threads``) and synthesis precision (``--decode-precision``; the server's ``decode.precision``).
Prints Markdown tables; one warm-up run precedes
the timed runs. CPU only: the GPU path (entropy decoding on CPU workers, synthesis on the GPU, synchronized) is
benchmarks/gpu_decode.py.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from mvic.shared.codec import fixedpoint
from mvic.shared.codec.entropy_coding import EncodeSession
from mvic.shared.codec.fixedpoint import Backend, ExactOptions, exact_form, exact_mode, run_layers
from mvic.shared.codec.gains import RateGains
from mvic.shared.codec.images import to_padded_tensor
from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import load_model
from mvic.shared.codec.transforms import Precision, encoder_form, last_in_float32, native_bf16
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


ENCODE_PATHS = ("reference", "fp32", "bf16")


@torch.no_grad()
def encode_stages(model: LDMIC, image: np.ndarray, path: str = "reference") -> dict[str, float]:
    """One encode of ``image`` at rate 2 along ``path`` (ENCODE_PATHS), timed by stage."""
    rate = torch.tensor([2])
    if path == "reference":
        g_a, h_a, opts = model.g_a, (lambda y: last_in_float32(model.h_a, y)), ExactOptions()
    else:
        g_a, h_a, opts = encoder_form(model.g_a, path), encoder_form(model.h_a, path), ExactOptions(Backend.TAPS)
    t = {}
    t0 = time.perf_counter()
    x = to_padded_tensor(image)
    y = g_a(x) * RateGains.pick(model.gains.y_gain, rate)
    t["analysis"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    z = h_a(y) * RateGains.pick(model.gains.z_gain, rate)
    t_ha = time.perf_counter() - t0
    session = _TimedEncodeSession(1)
    t0 = time.perf_counter()
    model.latent_codec.code(y, z, rate, session, opts)
    t_code = time.perf_counter() - t0
    stream = session.finish()[0]
    with exact_mode():
        t0 = time.perf_counter()  # h_s alone, to split the exact part
        z_in = torch.zeros(1, model.spec.n, *z.shape[-2:], dtype=torch.float64)
        run_layers(exact_form(model.h_s), z_in, opts)
        t_hs = time.perf_counter() - t0
    t["hyper"] = t_ha + t_hs
    t["rans"] = session.seconds
    t["entropy_params"] = max(0.0, t_code - session.seconds - t_hs)
    t["total"] = sum(t.values())
    t["bytes"] = len(stream)
    return t


@torch.no_grad()
def entropy_time(model: LDMIC, views, opts: ExactOptions, threads: int, torch_threads: int):
    """Seconds to entropy-decode ``views`` jointly, their views shared over ``threads`` threads, each with
    torch_threads / threads intra-op threads (so the cores are not oversubscribed); and the latents."""
    torch.set_num_threads(max(1, torch_threads // threads))
    try:
        t0 = time.perf_counter()
        lat = model._decode_latents(views, opts, threads)
        return time.perf_counter() - t0, lat
    finally:
        torch.set_num_threads(torch_threads)


@torch.no_grad()
def synthesis_time(model: LDMIC, views, lat, precision: str) -> float:
    rate = torch.tensor([v.header.rate_index for v in views])
    t0 = time.perf_counter()
    y_hat = fixedpoint.from_fixed(lat.y_hat_fx).float() * RateGains.pick(model.gains.y_inverse, rate)
    model._synthesize(y_hat, 1, len(views), Precision(precision))
    return time.perf_counter() - t0


#: (exact backend, entropy threads, synthesis precision) of the decoder before issue 16: the reference row
DECODE_REFERENCE = ("native", 1, "fp32")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1080x1920", help="HxW of each view (default %(default)s)")
    p.add_argument("--models", nargs="+", default=["ldmic-fast-lite", "ldmic-lite", "ldmic-fast", "ldmic"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--views", nargs="+", type=int, default=[2, 7])
    p.add_argument("--encode-paths", nargs="+", choices=ENCODE_PATHS, default=list(ENCODE_PATHS),
                   help="encode paths timed side by side (default: all)")
    p.add_argument("--repeat", type=int, default=3, help="timed encodes per path and thread count; medians")
    p.add_argument("--no-decode", action="store_true", help="encode rows only")
    p.add_argument("--decode-backends", nargs="+", choices=[b.value for b in Backend], default=["native", "taps"],
                   help="exact-network backends of entropy decoding (default %(default)s)")
    p.add_argument("--entropy-threads", nargs="+", type=int, default=None,
                   help="threads sharing a group's views in entropy decoding (default: 1 and max --threads)")
    p.add_argument("--decode-precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                   help="synthesis precisions (default %(default)s; the server's decode.precision: auto is bf16 "
                        "where the CPU has native bf16)")
    p.add_argument("--decode-repeat", type=int, default=1, help="timed decodes per configuration; medians")
    p.add_argument("--weights", nargs="+", type=Path, default=[],
                   help="time these weights files (e.g. shared/codec/weights/*.safetensors) instead of random "
                        "weights of --models; rows are named by file")
    args = p.parse_args(argv)
    h, w = map(int, args.size.split("x"))
    print(f"# codec speed, {h}x{w} per view, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads available, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 {'yes' if native_bf16() else 'no'}; GPU decoding: benchmarks/gpu_decode.py\n")
    print(f"Encode: medians of {args.repeat} interleaved runs; x = reference total / this path's total.\n")
    print("| model | encode path | enc threads | analysis s | hyper s | entropy params s | rANS s | encode total s | x |")
    print("|---|---|---|---|---|---|---|---|---|")
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
        small, image = blocky_image(128, 128), blocky_image(h, w)
        for path in args.encode_paths:
            encode_stages(model, small, path)  # warm-up (and the fast forms are made)
        for threads in args.threads:
            torch.set_num_threads(threads)
            runs: dict[str, list[dict[str, float]]] = {path: [] for path in args.encode_paths}
            for _ in range(args.repeat):
                for path in args.encode_paths:
                    runs[path].append(encode_stages(model, image, path))
            med = {path: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for path, rs in runs.items()}
            for path, t in med.items():
                speedup = f"{med['reference']['total'] / t['total']:.1f}" if "reference" in med else "-"
                print(f"| {name} | {path} | {threads} | {t['analysis']:.2f} | {t['hyper']:.2f} | "
                      f"{t['entropy_params']:.2f} | {t['rans']:.2f} | {t['total']:.2f} | {speedup} |", flush=True)
    torch.set_num_threads(max(args.threads))
    if args.no_decode:
        return 0
    threads = max(args.threads)
    entropy_configs = [(b, n) for b in args.decode_backends for n in (args.entropy_threads or sorted({1, threads}))]
    print(f"\nDecode on {threads} threads: medians of {args.decode_repeat} interleaved runs; entropy decoding with "
          "T threads sharing the views runs torch with threads / T intra-op threads; x = the reference row "
          f"({', '.join(map(str, DECODE_REFERENCE))}) total / this row's total.\n")
    print("| model | K views | exact backend | entropy threads | entropy decode s | synthesis | synthesis s | "
          "decode total s | per view s | x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, model in models.items():
        views = [model.compress_view(blocky_image(h, w, seed=k), 2, camera_id=f"C{k + 1}")
                 for k in range(max(args.views))]
        for k in args.views:
            group = views[:k]
            entropy = {c: [] for c in entropy_configs}
            synthesis = {p: [] for p in args.decode_precision}
            for c in entropy_configs:  # warm-up (numba, the exact and bf16 forms)
                _, lat = entropy_time(model, views[:1], ExactOptions(Backend(c[0])), c[1], threads)
            for p in args.decode_precision:
                synthesis_time(model, views[:1], lat, p)
            for _ in range(args.decode_repeat):
                for c in entropy_configs:
                    te, lat = entropy_time(model, group, ExactOptions(Backend(c[0])), c[1], threads)
                    entropy[c].append(te)
                for p in args.decode_precision:
                    synthesis[p].append(synthesis_time(model, group, lat, p))
            te = {c: statistics.median(v) for c, v in entropy.items()}
            ts = {p: statistics.median(v) for p, v in synthesis.items()}
            ref = te.get(DECODE_REFERENCE[:2], 0) + ts.get(DECODE_REFERENCE[2], 0)
            for (backend, n), e in te.items():
                for p, s in ts.items():
                    x = f"{ref / (e + s):.1f}" if DECODE_REFERENCE[:2] in te and DECODE_REFERENCE[2] in ts else "-"
                    print(f"| {name} | {k} | {backend} | {n} | {e:.2f} | {p} | {s:.2f} | {e + s:.2f} | "
                          f"{(e + s) / k:.2f} | {x} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
