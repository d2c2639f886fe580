"""Peak resident memory of a camera's encoder: imports, model load, and 1080p encodes, as the node does them.

    .venv/bin/python benchmarks/node_memory.py [--size 1080x1920] [--encodes 2] [--threads 1] [--precision auto]

Run it in a fresh process (it is one): ``ru_maxrss`` is the process's peak. It imports what ``mvic-node`` imports to
code (the node's encoder module, hence torch and the codec's CompressAI modules), loads the installed default
weights the way the node does (``load_encoder``) and codes ``--encodes`` frames with ``LDMIC.compress_view`` at the
node's default rate, with glibc's mmap threshold pinned as the node pins it (``--no-pin``: not). Prints one Markdown row per stage: peak RSS so far, and seconds.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1080x1920", help="HxW of the frame")
    p.add_argument("--encodes", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--no-pin", action="store_true", help="leave glibc's mmap threshold dynamic (before the node "
                   "pinned it)")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    from mvic.shared.heap import pin_mmap_threshold
    pinned = False if args.no_pin else pin_mmap_threshold()  # as mvic-node does at start
    rows = [("start (python, argparse)", peak_mib(), 0.0)]
    t0 = time.perf_counter()
    import numpy as np

    from mvic.node.config import EncodeConfig
    from mvic.node.encoder import configure_torch, load_encoder
    rows.append(("imports (torch, codec, CompressAI's codec modules)", peak_mib(), time.perf_counter() - t0))
    heavy = [m for m in ("torchvision", "torch_geometric") if m in sys.modules]
    configure_torch(args.threads)
    config = EncodeConfig(precision=args.precision)
    t0 = time.perf_counter()
    model = load_encoder(config)
    rows.append((f"load_encoder ({model.spec.name})", peak_mib(), time.perf_counter() - t0))
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for i in range(args.encodes):
        t0 = time.perf_counter()
        view = model.compress_view(image, config.rate, camera_id="C1", sequence=i + 1, capture_ns=0,
                                   precision=config.precision)
        rows.append((f"encode {i + 1} ({view.payload_bytes} bytes)", peak_mib(), time.perf_counter() - t0))
    print(f"{h}x{w}, {args.threads} thread(s), encode.precision {args.precision}; mmap threshold pinned: {pinned}; modules not imported: "
          f"{', '.join(m for m in ('torchvision', 'torch_geometric') if m not in heavy) or 'none'}\n")
    print("| stage | peak RSS MiB | s |\n|---|---|---|")
    for name, mib, seconds in rows:
        print(f"| {name} | {mib:.0f} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
