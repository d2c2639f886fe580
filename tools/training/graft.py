"""Weights grafted from two files of one lineage: one file's tensors, with those under some prefixes from another.

    python -m mvic.tools.training.graft --base FAST.safetensors --take AR.safetensors -o START.safetensors
        [--prefixes h_a. h_s. entropy_bottleneck. context. gaussian_conditional.]
    python -m mvic.tools.training.graft --base AR.safetensors --take FAST-R.safetensors --prefixes refine_head. \
        --model ldmic-lite-r --record -o AR-R.safetensors

Made to start a refresh of the autoregressive model from new fast weights with the previous AR weights' entropy
model, which has learnt the causal context already (``scripts/campaign.sh refresh-ar MINUTES FAST AR``): the
refresh then begins near where the last one ended instead of at the fast model's checkerboard context. The output
names ``--take``'s model (the architecture whose context it holds) and is a start for ``init_from``, not weights
to ship (no record). Both files must hold the same tensors, except that ``--take`` may hold more under the
prefixes; a tensor kept from ``--base`` must have ``--take``'s shape; every prefix must name something.

The second form gives autoregressive weights the decoder-only refinement head trained on fast weights of the same
transforms (``ldmic-fast-lite-r``: refine_head.py): ``--model`` names the architecture written (default: ``--take``'s),
whose tensors the graft must hold exactly, and ``--record`` writes the file as weights to ship (CDF tables rebuilt,
convolution kernels in float16) with a ``.record.json`` beside it for ``mvic-publish``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import CDF_TABLES, FORMAT_TAG, export_weights, write_sidecar_record
from mvic.shared.errors import MVICError
from mvic.shared.model_table import spec_by_name
from mvic.tools.training.train import ENTROPY_MODEL_PREFIXES

#: The entropy model of an LDMIC, what the autoregressive and the checkerboard models do not share in meaning: the
#: parameters optim.train_only trains in a refresh, and the Gaussian conditional's tables (buffers only)
ENTROPY_MODEL = (*ENTROPY_MODEL_PREFIXES, "gaussian_conditional.")


def graft(base: Path, take: Path, out: Path, prefixes: tuple[str, ...] = ENTROPY_MODEL, model: str | None = None,
          record: bool = False) -> int:
    """Write ``out``: ``base``'s tensors, those under ``prefixes`` from ``take``; returns how many came from take.
    ``model``: the architecture written (default ``take``'s); ``record``: write it as weights to ship, with a record."""
    with safe_open(str(base), "pt") as b, safe_open(str(take), "pt") as t:
        only_base = set(b.keys()) - set(t.keys())
        only_take = {k for k in set(t.keys()) - set(b.keys()) if not k.startswith(prefixes)}
        if only_base or only_take:
            odd = sorted(only_base | only_take)
            raise ValueError(f"{base.name} and {take.name} hold different tensors (e.g. {odd[0]}): not one lineage")
        unknown = [p for p in prefixes if not any(k.startswith(p) for k in t.keys())]
        if unknown:
            raise ValueError(f"--prefixes {unknown} name no tensor of {take.name}")
        state, taken = {}, 0
        for key in t.keys():
            if key.startswith(prefixes):
                state[key] = t.get_tensor(key)
                taken += 1
                continue
            tensor = b.get_tensor(key)
            if tuple(tensor.shape) != tuple(t.get_slice(key).get_shape()) and not key.endswith(CDF_TABLES):
                raise ValueError(f"{key}: {base.name} has shape {tuple(tensor.shape)}, {take.name} "
                                 f"{tuple(t.get_slice(key).get_shape())}; take it too (--prefixes) or use other files")
            state[key] = tensor
        metadata = t.metadata()
    if model is not None:
        spec = spec_by_name(model)
        wanted = set(LDMIC(spec).state_dict())
        if wanted != set(state):
            odd = sorted(wanted ^ set(state))
            raise ValueError(f"the graft's tensors are not those of {spec.name} (e.g. {odd[0]}); graft files of its "
                             "lineage, or name the architecture they make")
        metadata = {"mvic": json.dumps({"format": FORMAT_TAG, "model": spec.name, "model_id": spec.model_id},
                                       sort_keys=True)}
    if record:  # through the exporter: strict load, CDF tables rebuilt, float16 kernels, the record for mvic-publish
        named = json.loads((metadata or {}).get("mvic", "{}")).get("model", "")
        net = LDMIC(spec_by_name(model or named)).eval()  # ConfigError for a file that names no architecture
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"the graft does not load into {net.spec.name}: {exc}") from None
        digest = export_weights(net, out, fp16_kernels=True)
        write_sidecar_record(out, digest, net.spec.name, "mse", f"{base.name} with {', '.join(prefixes)} from "
                                                           f"{take.name} (python -m mvic.tools.training.graft)")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out), metadata=metadata)
    return taken


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mvic.tools.training.graft", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="weights whose tensors are kept (e.g. new fast weights)")
    p.add_argument("--take", type=Path, required=True, help="weights whose tensors under --prefixes replace them")
    p.add_argument("-o", "--out", type=Path, required=True, help="the grafted weights (.safetensors)")
    p.add_argument("--prefixes", nargs="+", default=list(ENTROPY_MODEL), help="tensor-name prefixes taken")
    p.add_argument("--model", default=None, help="the architecture written (default: --take's)")
    p.add_argument("--record", action="store_true",
                   help="write weights to ship (CDF tables rebuilt, float16 kernels) and their .record.json")
    args = p.parse_args(argv)
    try:
        taken = graft(args.base, args.take, args.out, tuple(args.prefixes), args.model, args.record)
    except (ValueError, OSError, SafetensorError, MVICError) as exc:  # mismatched files; missing or not safetensors
        print(f"graft: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {taken} tensors from {args.take.name}, the rest from {args.base.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
