"""Weights blended from two files of one lineage: a point on the straight line between them.

    python -m mvic.tools.training.blend --from A.safetensors --to B.safetensors --weight 0.5 -o BLEND.safetensors

``(1 - weight) * A + weight * B`` for every learned tensor (convolutions, GDN, gains, JCTs, the entropy models'
parameters); the CDF tables are then rebuilt from the blend, as an export does, and the file is written like the
shipped weights (convolution kernels in float16), with a ``.record.json`` beside it for ``mvic-publish``. Made for
two exports of one run that trade one held-out set against the other (the shipped weights and the campaign's
latest): weights a few thousand steps apart lie in one basin, and points between them are often better than
either end (Wortsman et al. 2022, "model soups"). Both files must hold the same model with the same tensors.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from mvic.shared.codec.registry import CDF_TABLES, export_weights, load_model, write_sidecar_record
from mvic.shared.errors import MVICError

#: tensors sized and filled by update() from the blended parameters, and the masks the architecture fixes
REBUILT = (*CDF_TABLES, ".mask")


def blend(start: Path, end: Path, weight: float, out: Path) -> str:
    """Write ``out``, ``start`` moved ``weight`` of the way to ``end``; returns its sha256."""
    if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise ValueError(f"--weight must be between 0 and 1, not {weight}")
    model = load_model(start)
    target = load_model(end, model=model.spec.name).state_dict()  # strict: same architecture, same tensors
    with torch.no_grad():  # state_dict() shares the model's storage: lerp_ moves the model itself
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not key.endswith(REBUILT):
                tensor.lerp_(target[key], weight)
    digest = export_weights(model, out, fp16_kernels=True)
    recipe = f"{start.name} blended {weight:g} of the way to {end.name} (python -m mvic.tools.training.blend)"
    write_sidecar_record(out, digest, model.spec.name, "mse", recipe)
    return digest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mvic.tools.training.blend", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="start", type=Path, required=True, help="weights at --weight 0")
    p.add_argument("--to", dest="end", type=Path, required=True, help="weights at --weight 1 (same model)")
    p.add_argument("--weight", type=float, required=True, help="how far from --from towards --to, 0 ... 1")
    p.add_argument("-o", "--out", type=Path, required=True, help="the blended weights (.safetensors)")
    args = p.parse_args(argv)
    try:
        digest = blend(args.start, args.end, args.weight, args.out)
    except (ValueError, OSError, MVICError) as exc:  # other lineages; missing or damaged files
        print(f"blend: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {1 - args.weight:g} x {args.start.name} + {args.weight:g} x {args.end.name}, "
          f"sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
