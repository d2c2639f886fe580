"""Rate cost of the exact integer entropy model: estimated bits with the float networks vs the integer ones.

    .venv/bin/python benchmarks/exact_rate_cost.py [--weights W.safetensors | --model NAME] [--images N]

Both sides use hard rounding, the scale table, and the same context semantics (checkerboard: anchors then
non-anchors from the rounded anchors); only the arithmetic of h_s / context / EP differs (float32 vs fixed point),
so the difference is what exactness costs. Also reports real coded bytes. Images: the bundled stereo pair plus
smooth random images.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mvic.shared.bitstream import pack
from mvic.shared.codec.context import CheckerboardContext
from mvic.shared.codec.gains import RateGains
from mvic.shared.codec.images import to_padded_tensor
from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import load_model
from mvic.shared.model_table import ContextModel, spec_by_name
from mvic.tools.samples import stereo_pair


@torch.no_grad()
def float_bits(model: LDMIC, x: torch.Tensor, rate: int) -> float:
    """Estimated bits of one padded image with float32 h_s / context / EP and hard rounding."""
    r = torch.tensor([rate])
    gc = model.gaussian_conditional
    y = model.g_a(x) * RateGains.pick(model.gains.y_gain, r)
    z = model.h_a(y) * RateGains.pick(model.gains.z_gain, r)
    z_hat, lik_z = model.entropy_bottleneck(z, training=False)
    params = model.h_s(z_hat * RateGains.pick(model.gains.z_inverse, r))
    ctx_model = model.context
    table = gc.scale_table

    def table_scales(s):
        return table[gc.build_indexes(s).long()]

    if model.spec.context is ContextModel.CHECKERBOARD:
        anchor = CheckerboardContext.anchor_mask(*y.shape[-2:], y.device)
        sa, ma = ctx_model._ep(params, torch.zeros_like(params))
        y_anchor = (torch.round(y - ma) + ma) * anchor
        sn, mn = ctx_model._ep(params, ctx_model.context_prediction(y_anchor))
        scales, means = torch.where(anchor, sa, sn), torch.where(anchor, ma, mn)
    else:  # serial, float
        h, w = y.shape[-2:]
        padded = torch.nn.functional.pad(torch.zeros_like(y), (2, 2, 2, 2))  # decoded latent, 2-pixel border
        scales, means = torch.zeros_like(y), torch.zeros_like(y)
        conv = ctx_model.context_prediction
        weight = conv.weight * conv.mask
        for i in range(h):
            for j in range(w):
                ctx = torch.nn.functional.conv2d(padded[:, :, i:i + 5, j:j + 5], weight, conv.bias)  # (1, 2M, 1, 1)
                s, m = ctx_model._ep(params[:, :, i:i + 1, j:j + 1], ctx)
                scales[:, :, i, j], means[:, :, i, j] = s[:, :, 0, 0], m[:, :, 0, 0]
                padded[:, :, i + 2, j + 2] = torch.round(y[:, :, i, j] - m[:, :, 0, 0]) + m[:, :, 0, 0]
    y_q = torch.round(y - means) + means
    lik_y = gc.likelihood_lower_bound(gc._likelihood(y_q, table_scales(scales), means))
    return float(-(lik_y.log2().sum() + lik_z.log2().sum()))


@torch.no_grad()
def exact_bits(model: LDMIC, x: torch.Tensor, rate: int) -> float:
    out = model(x.unsqueeze(1), torch.tensor([rate]))
    return float(-(out.likelihoods_y.log2().sum() + out.likelihoods_z.log2().sum()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="weights file (default: a randomly initialised --model)")
    p.add_argument("--model", default="ldmic-fast-lite")
    p.add_argument("--images", type=int, default=4, help="random images besides the stereo pair")
    p.add_argument("--gain-boost", type=float, default=20.0,
                   help="random init only: scale y/z gains so latents are not all rounded to zero (default 20)")
    args = p.parse_args(argv)
    if args.weights:
        model = load_model(args.weights)
        label = args.weights
    else:
        torch.manual_seed(0)
        model = LDMIC(spec_by_name(args.model)).eval()
        with torch.no_grad():
            model.gains.y_gain.mul_(args.gain_boost)
            model.gains.z_gain.mul_(args.gain_boost ** 0.5)
        model.update(force=True)
        model.weights_hash = b"\0" * 8
        label = f"{args.model}, random init, gains x{args.gain_boost:g}"
    rng = np.random.default_rng(0)
    images = [img for _, img in stereo_pair()]
    for _ in range(args.images):
        coarse = rng.integers(0, 256, (20, 30, 3)).astype(np.float32)
        images.append(np.clip(np.kron(coarse, np.ones((16, 16, 1))) + rng.normal(0, 8, (320, 480, 3)), 0, 255)
                      .astype(np.uint8))
    print(f"# exact vs float entropy model, {label}, {len(images)} images\n")
    print("| rate | float bits | exact bits | exact/float - 1 | real bytes (exact, with header) |")
    print("|---|---|---|---|---|")
    for rate in range(model.spec.num_rates):
        fb = eb = 0.0
        real = 0
        for img in images:
            x = to_padded_tensor(img)
            fb += float_bits(model, x, rate)
            eb += exact_bits(model, x, rate)
            real += len(pack(model.compress_view(img, rate)))
        print(f"| {rate} | {fb:.0f} | {eb:.0f} | {100 * (eb / fb - 1):+.3f} % | {real} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
