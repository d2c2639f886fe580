"""The checkerboard context's two exact paths side by side: strided lattices + the context convolution at the
non-anchors only (``_code_lattice``, taken for even latent sizes) against boolean masks + the whole convolution
(``_code_masked``, before issue 16's second round; still taken for odd sizes).

    .venv/bin/python benchmarks/checkerboard_paths.py [--weights FILE] [--size 1080x1920] [--repeat 5] [--threads 1]

For one view's latents at ``--size`` (random symbols at the model's rate 2, the shipped weights by default) each
path codes the latent (encode: symbols into rANS; decode: the same streams back) ``--repeat`` times, interleaved;
prints the medians and checks that both paths wrote the same streams and decoded the same latents.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from mvic.shared.codec.entropy_coding import DecodeSession, EncodeSession
from mvic.shared.codec.fixedpoint import Backend, ExactOptions, exact_mode, to_fixed
from mvic.shared.codec.registry import default_weights, load_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="weights file (default: the installed ldmic-fast-lite)")
    p.add_argument("--size", default="1080x1920")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.weights or default_weights("ldmic-fast-lite"))
    ctx, codec = model.context, model.latent_codec
    h, w = (-(-int(v) // 64) * 64 // 16 for v in args.size.split("x"))  # padded to 64, then /16
    torch.manual_seed(0)
    opts = ExactOptions(Backend.TAPS)
    times: dict[str, list[float]] = {f"{path} {way}": [] for path in ("lattice", "masked") for way in ("encode",
                                                                                                      "decode")}
    with torch.no_grad(), exact_mode():
        params_fx = to_fixed(torch.randn(1, 2 * ctx.m, h, w, dtype=torch.float64) * 2)
        y = torch.randn(1, ctx.m, h, w, dtype=torch.float64) * 4
        tables = codec._gaussian_tables()
        paths = {"lattice": lambda s, t: ctx._code_lattice(params_fx, t, s, tables),
                 "masked": lambda s, t: ctx._code_masked(params_fx, t, s, tables, opts)}
        streams, decoded = {}, {}
        for _ in range(args.repeat + 1):  # the first round warms up
            for name, code in paths.items():
                t0 = time.perf_counter()
                session = EncodeSession(1)
                code(session, y)
                streams[name] = session.finish()
                t1 = time.perf_counter()
                decoded[name] = code(DecodeSession(streams[name]), None).y_hat_fx
                t2 = time.perf_counter()
                times[f"{name} encode"].append(t1 - t0)
                times[f"{name} decode"].append(t2 - t1)
    same = streams["lattice"] == streams["masked"] and torch.equal(decoded["lattice"], decoded["masked"])
    print(f"latent {h}x{w} (M = {ctx.m}) of a {args.size} view, {args.threads} thread(s), medians of {args.repeat} "
          f"interleaved runs; same streams and latents: {same}\n")
    print("| path | encode s | decode s |\n|---|---|---|")
    for name in ("lattice", "masked"):
        enc = statistics.median(times[f"{name} encode"][1:])
        dec = statistics.median(times[f"{name} decode"][1:])
        print(f"| {name} | {enc:.3f} | {dec:.3f} |")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
