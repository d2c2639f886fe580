"""Fuzz campaign: hostile packets through ``unpack`` + ``decompress`` with the shipped weights, in this process.

    .venv/bin/python benchmarks/fuzz.py [--cases 10000] [--seed 0] [--max-pixels 65536] [--weights W]

The packets come from ``tests/strategies.py``: random bytes, truncated and bit-flipped packets, header fields set to
any value with the CRC made valid again, valid headers declaring other sizes (up to --max-pixels), entropy-coded
streams replaced, flipped or cut, and issue 13's crashing 0xFF run. Every case must end decoded or refused with a
named MVIC error; anything else is counted as a failure with its bytes' sha256 prefix. A crash ends the process (no
summary): the exit status tells. Prints outcome counts, the slowest case and the peak RSS.
The server side of the campaign (hostile sessions over gRPC to a running mvic-server) is
``benchmarks/fuzz_server.py`` (bounded in the suite: ``tests/fusion_server/test_fuzz_wire.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.strategies

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

from mvic.shared.bitstream import unpack  # noqa: E402
from mvic.shared.codec.registry import default_weights, load_model  # noqa: E402
from mvic.shared.errors import MVICError  # noqa: E402
from mvic.shared.model_table import DEFAULT_MODEL  # noqa: E402
from tests.strategies import hostile_packets  # noqa: E402


def _seed_views(model, rng: np.random.Generator):
    from tests.conftest import random_image

    sizes = [(64, 64, 0), (96, 128, 2), (70, 33, model.spec.num_rates - 1), (128, 128, 1)]
    return [model.compress_view(random_image(rng, h, w), q, camera_id=f"C{i + 1}", sequence=i + 1)
            for i, (h, w, q) in enumerate(sizes)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-pixels", type=int, default=256 * 256, help="largest declared size a case may carry")
    ap.add_argument("--weights", default=None, help=f"weights file (default: the shipped {DEFAULT_MODEL})")
    args = ap.parse_args(argv)

    model = load_model(args.weights or default_weights(DEFAULT_MODEL))
    views = _seed_views(model, np.random.default_rng(args.seed))
    outcomes: dict[str, int] = {}
    failures: list[str] = []
    slowest = (0.0, "")

    @settings(max_examples=args.cases, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(packet=hostile_packets(views, max_pixels=args.max_pixels, max_stream=1 << 20))
    def case(packet: bytes) -> None:
        nonlocal slowest
        start = time.perf_counter()
        try:
            view = unpack(packet)
            model.decompress([view])
            outcome = "decoded"
        except MVICError as exc:
            outcome = type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - the campaign counts every other outcome as a failure
            outcome = f"UNNAMED {type(exc).__name__}"
            failures.append(f"{hashlib.sha256(packet).hexdigest()[:16]}: {type(exc).__name__}: {str(exc)[:200]}")
        seconds = time.perf_counter() - start
        if seconds > slowest[0]:
            slowest = (seconds, outcome)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    import random

    random.seed(args.seed)
    t0 = time.perf_counter()
    case()
    total = sum(outcomes.values())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"# fuzz, in process: {model.spec.name} ({(args.weights or 'shipped weights')}), {platform.processor() or platform.machine()}")
    print(f"cases {total} in {time.perf_counter() - t0:.0f} s; max declared pixels {args.max_pixels}")
    for name, n in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {n}")
    print(f"slowest case {slowest[0]:.2f} s ({slowest[1]}); peak RSS {peak_mib:.0f} MiB; unnamed outcomes {len(failures)}")
    for line in failures[:20]:
        print("  " + line)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
