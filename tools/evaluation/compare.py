"""Two MVIC weights on the same groups: the Bjontegaard figures of one's joint decoding against the other's.

    python -m mvic.tools.evaluation.compare --anchor eval/fast-stereo-photos --test eval/ar-stereo-photos

Each side is an mvic-eval output folder (or its results.json) of the same dataset and groups; the figures are
BD-rate in PSNR and in MS-SSIM dB (negative: the test weights need fewer bits) and BD-PSNR (dB at equal rate).
Used to check that the autoregressive ldmic-lite stays better than the fast weights it was refreshed from.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from mvic.tools.evaluation.evaluate import RDRow, bd_table
from mvic.tools.evaluation.publish import ResultsError, load_results

JOINT = "mvic-joint"


def compare(anchor: list[RDRow], test: list[RDRow]) -> dict[str, float]:
    """{"psnr": BD-rate %, "ms-ssim-db": BD-rate %, "bd-psnr-db": dB} of the test's joint rows vs the anchor's."""
    rows = [replace(r, codec="anchor") for r in anchor if r.codec == JOINT]
    rows += [r for r in test if r.codec == JOINT]
    return {key: table[JOINT] for key, table in bd_table(rows, anchor="anchor").items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mvic.tools.evaluation.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anchor", type=Path, required=True, help="mvic-eval output of the reference weights")
    p.add_argument("--test", type=Path, required=True, help="mvic-eval output of the weights under test")
    args = p.parse_args(argv)
    try:
        anchor, test = load_results("anchor", args.anchor), load_results("test", args.test)
    except ResultsError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    bd = compare(list(anchor.rows), list(test.rows))
    print(f"{args.test} vs {args.anchor} (joint decoding): BD-rate {bd['psnr']:+.2f} % (PSNR), "
          f"{bd['ms-ssim-db']:+.2f} % (MS-SSIM), BD-PSNR {bd['bd-psnr-db']:+.3f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
