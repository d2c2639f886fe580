"""The training campaign's learning curve (issue 10): one row per evaluated export, a CSV and a figure.

    python -m mvic.tools.evaluation.curve --csv docs/learning-curve.csv --plot docs/learning-curve.png \\
        --add LABEL --steps N --hours H --results stereo-photos=results/X/real [synthetic=results/X/synth] \\
        [--baselines-from stereo-photos=results/Y/real]

Each row holds, per held-out dataset, the BD-rate (PSNR) of MVIC's joint decoding against x265 intra 4:4:4, JPEG
and WebP, joint against separate decoding, and the rate points' bpp and PSNR span. ``--baselines-from`` takes the
classical codecs' rows from another mvic-eval run on the same groups (they do not depend on the weights), so an
export need only code MVIC. A row with the same label is replaced; rows are kept in the order of their hours.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, fields
from pathlib import Path

from mvic.tools.evaluation.bdrate import bd_rate
from mvic.tools.evaluation.evaluate import RDRow
from mvic.tools.evaluation.publish import load_results

ANCHORS = {"x265": "x265-intra-444", "jpeg": "jpeg", "webp": "webp"}


@dataclass(frozen=True)
class CurvePoint:
    label: str
    dataset: str
    steps: int
    hours: float  # training hours (GPU and CPU wall time together; the note says which is which)
    bd_x265: float  # BD-rate % of MVIC joint vs x265 intra 4:4:4, PSNR
    bd_jpeg: float
    bd_webp: float
    joint_vs_separate: float
    bpp_min: float
    bpp_max: float
    psnr_span_db: float


def _codec(rows: list[RDRow], name: str) -> list[RDRow]:
    return sorted((r for r in rows if r.codec == name), key=lambda r: r.bpp)


def _bd(anchor: list[RDRow], test: list[RDRow]) -> float:
    if len(anchor) < 2 or len(test) < 2:
        return math.nan
    try:
        return bd_rate([r.bpp for r in anchor], [r.psnr_db for r in anchor], [r.bpp for r in test],
                       [r.psnr_db for r in test])
    except ValueError:  # the curves do not overlap in quality
        return math.nan


def point(label: str, dataset: str, steps: int, hours: float, rows: list[RDRow],
          baseline_rows: list[RDRow] | None = None) -> CurvePoint:
    """The curve's figures for one mvic-eval run (its own baseline rows, or those of ``baseline_rows``)."""
    joint = _codec(rows, "mvic-joint")
    if not joint:
        raise ValueError(f"{label}/{dataset}: no mvic-joint rows")
    base = baseline_rows if baseline_rows is not None else rows
    bd = {key: _bd(_codec(base, name), joint) for key, name in ANCHORS.items()}
    psnrs = [r.psnr_db for r in joint]
    return CurvePoint(label, dataset, steps, hours, bd["x265"], bd["jpeg"], bd["webp"],
                      _bd(_codec(rows, "mvic-separate"), joint), joint[0].bpp, joint[-1].bpp, max(psnrs) - min(psnrs))


def read_csv(path: Path) -> list[CurvePoint]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        out = []
        for row in csv.DictReader(f):
            out.append(CurvePoint(row["label"], row["dataset"], int(row["steps"]),
                                  *(float(row[fl.name]) for fl in fields(CurvePoint)[3:])))
        return out


def write_csv(path: Path, points: list[CurvePoint]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")  # one line ending, as git and diff expect
        w.writerow([fl.name for fl in fields(CurvePoint)])
        for p in points:
            w.writerow([p.label, p.dataset, p.steps, *(f"{getattr(p, fl.name):.4g}" for fl in fields(CurvePoint)[3:])])


def plot(path: Path, points: list[CurvePoint]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, x, xlabel in ((axes[0], "steps", "training steps (batch sizes differ: CPU 4 groups, GPU 16)"),
                          (axes[1], "hours", "training hours (CPU and GPU wall time)")):
        for dataset in dict.fromkeys(p.dataset for p in points):
            ps = sorted((p for p in points if p.dataset == dataset), key=lambda p: (p.hours, p.steps))
            for key, style in (("bd_x265", "o-"), ("bd_jpeg", "s--"), ("bd_webp", "^:")):
                ax.plot([getattr(p, x) for p in ps], [getattr(p, key) for p in ps], style,
                        label=f"{dataset}: vs {key[3:]}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("BD-rate, PSNR (%; < 0 beats the codec)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _labelled(pairs: list[str]) -> dict[str, Path]:
    out = {}
    for pair in pairs:
        label, sep, where = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected DATASET=DIR, got {pair!r}")
        out[label] = Path(where)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", type=Path, default=Path("docs/learning-curve.csv"))
    p.add_argument("--plot", type=Path, default=Path("docs/learning-curve.png"))
    p.add_argument("--add", metavar="LABEL", help="add (or replace) this export's rows")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--hours", type=float, default=0.0)
    p.add_argument("--results", nargs="*", default=[], metavar="DATASET=DIR")
    p.add_argument("--baselines-from", nargs="*", default=[], metavar="DATASET=DIR")
    args = p.parse_args(argv)
    points = read_csv(args.csv)
    if args.add:
        bases = {k: list(load_results(k, v).rows) for k, v in _labelled(args.baselines_from).items()}
        new = [point(args.add, dataset, args.steps, args.hours, list(load_results(dataset, where).rows),
                     bases.get(dataset)) for dataset, where in _labelled(args.results).items()]
        keys = {(q.label, q.dataset) for q in new}
        points = sorted([q for q in points if (q.label, q.dataset) not in keys] + new, key=lambda q: q.hours)
        write_csv(args.csv, points)
    if points:
        plot(args.plot, points)
    for q in points:
        print(f"{q.label:24s} {q.dataset:14s} steps {q.steps:6d} h {q.hours:6.2f}  BD vs x265 {q.bd_x265:+7.1f} %  "
              f"vs JPEG {q.bd_jpeg:+7.1f} %  vs WebP {q.bd_webp:+7.1f} %  joint {q.joint_vs_separate:+5.1f} %  "
              f"{q.bpp_min:.3f}..{q.bpp_max:.3f} bpp, span {q.psnr_span_db:.1f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
