"""``mvic-publish``: put the measured rate-distortion figures of shipped weights into their record and the README.

    mvic-publish --weights shared/codec/weights/W.safetensors \\
        --results synthetic=results/synth stereo-photos=results/real [--readme README.md] [--plot docs/rd-W.png]

Each ``LABEL=DIR`` names a folder (or a results.json) written by ``mvic-eval -o DIR``; LABEL becomes the dataset
of the measured points. The weights' record comes from ``weights/records.json`` if it lists the file, else from
``W.safetensors.record.json`` (written by ``mvic-train --export``); the file's sha256 must match it. Then:

1. ``records.json``: the record's ``measured`` becomes the mvic-joint rows of every results.json (sorted by name,
   written atomically);
2. ``--plot``: one figure, a row per dataset, PSNR and MS-SSIM (dB) against bpp for MVIC joint, MVIC separate and
   every baseline;
3. ``--readme``: the text between ``<!-- rd:NAME:begin -->`` and ``<!-- rd:NAME:end -->`` (NAME = the record's
   name) becomes the rate-point and Bjøntegaard tables and a link to the plot. Without the markers, the block is
   printed for you to place. Running it twice changes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mvic.shared.codec import registry
from mvic.shared.codec.registry import RDPoint, WeightsRecord
from mvic.shared.errors import MVICError, ResultsError, WeightsError
from mvic.tools.evaluation.evaluate import ANCHOR, QUALITY, RDRow

BD_KEYS = ("psnr", "ms-ssim-db", "bd-psnr-db")  # the Bjontegaard tables of results.json, as bd_table writes them


@dataclass(frozen=True)
class Results:
    """One mvic-eval run: its rows and Bjontegaard tables, under the dataset label given on the command line."""

    label: str
    path: Path  # the results.json
    rows: tuple[RDRow, ...]
    bd: dict[str, dict[str, float]]  # BD_KEYS -> codec (or "joint-vs-separate") -> value
    unavailable: tuple[str, ...] = ()  # baselines this ffmpeg could not run

    def codec(self, name: str) -> list[RDRow]:
        return sorted((r for r in self.rows if r.codec == name), key=lambda r: r.bpp)


def load_results(label: str, where: Path) -> Results:
    path = where / "results.json" if where.suffix != ".json" else where
    make = f"make it with: mvic-eval --weights W.safetensors --data DATA -o {path.parent}"
    if not path.is_file():
        raise ResultsError(f"{path} does not exist; {make}")
    try:
        data = json.loads(path.read_text())
        rows = tuple(RDRow(**row) for row in data["rows"])
        bd = {key: {k: float(v) for k, v in data["bjontegaard"][key].items()} for key in BD_KEYS}
        unavailable = tuple(data.get("unavailable_baselines", {}))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ResultsError(f"{path} is not an mvic-eval results.json ({type(exc).__name__}: {exc}); {make}") from None
    results = Results(label, path, rows, bd, unavailable)
    if not results.codec("mvic-joint"):
        raise ResultsError(f"{path} has no mvic-joint rows; {make}")
    return results


def measured_points(results: list[Results]) -> tuple[RDPoint, ...]:
    return tuple(RDPoint(int(r.setting), r.bpp, r.psnr_db, r.ms_ssim, res.label)
                 for res in results for r in sorted(res.codec("mvic-joint"), key=lambda r: r.setting))


def _listing() -> Path:
    return registry.WEIGHTS_DIR / "records.json"


def _record_from(entry: dict, source: Path) -> WeightsRecord:
    try:
        return WeightsRecord.from_json(entry)
    except TypeError as exc:
        raise WeightsError(f"{source}: not a weights record ({exc})") from None


def find_record(weights: Path) -> WeightsRecord:
    """The record of ``weights`` (records.json first, then the export's .record.json), hash verified."""
    if not weights.is_file():
        raise WeightsError(f"weights file {weights} does not exist; check the path")
    if weights.resolve().parent != registry.WEIGHTS_DIR.resolve():
        raise WeightsError(f"{weights} is not in {registry.WEIGHTS_DIR}; copy it there (records.json lists only "
                           "shipped files) and run again")
    listing, sidecar = _listing(), registry.sidecar_record_path(weights)
    entries = json.loads(listing.read_text()) if listing.is_file() else []
    known = [e for e in entries if e.get("file") == weights.name]
    if known:
        record = _record_from(known[0], listing)
    elif sidecar.is_file():
        record = _record_from(json.loads(sidecar.read_text()), sidecar)
        if any(e.get("name") == record.name for e in entries):
            raise WeightsError(f"{listing} already has a record named {record.name!r} for another file; "
                               f"rename the record in {sidecar}")
    else:
        raise WeightsError(f"no record for {weights}: {listing} does not list it and {sidecar} does not exist; "
                           f"export the weights with mvic-train --run RUN --export {weights}")
    if (digest := registry.sha256_of(weights)) != record.sha256.lower():
        raise WeightsError(f"{weights} has sha256 {digest}, but its record says {record.sha256}: the file is not the "
                           "one the record describes. Restore that file, or re-export with mvic-train --export "
                           "(which rewrites the .record.json) and remove the stale entry from records.json")
    return record


def write_records(record: WeightsRecord) -> Path:
    listing = _listing()
    entries = json.loads(listing.read_text()) if listing.is_file() else []
    entries = sorted([e for e in entries if e.get("name") != record.name] + [asdict(record)], key=lambda e: e["name"])
    tmp = listing.with_name(listing.name + ".tmp")
    tmp.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, listing)  # never a half-written listing under the real name
    return listing


def plot(results: list[Results], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4.2 * len(results)), squeeze=False)
    for res, (ax_psnr, ax_ssim) in zip(results, axes):
        for name in dict.fromkeys(r.codec for r in res.rows):
            rows, mvic = res.codec(name), name.startswith("mvic-")
            style = {"marker": "o", "label": name, "lw": 2.2 if mvic else 1.0, "ms": 5 if mvic else 3,
                     "ls": "--" if name == "mvic-separate" else "-"}
            ax_psnr.plot([r.bpp for r in rows], [r.psnr_db for r in rows], **style)
            ax_ssim.plot([r.bpp for r in rows], [QUALITY["ms-ssim-db"](r) if not math.isnan(r.ms_ssim)
                                                 else math.nan for r in rows], **style)
        for ax, what in ((ax_psnr, "PSNR (dB, 8-bit RGB)"), (ax_ssim, "MS-SSIM (dB, -10 log10(1 - MS-SSIM))")):
            ax.set(xlabel="bpp (real bytes)", ylabel=what, title=f"{title}: {res.label}")
            ax.grid(True, alpha=0.3)
        if all(math.isnan(r.ms_ssim) for r in res.rows):
            ax_ssim.text(0.5, 0.5, "no MS-SSIM (views of 160 px or less)", ha="center", transform=ax_ssim.transAxes)
        ax_psnr.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _f(value: float, fmt: str, unit: str = "") -> str:
    return "n/a" if math.isnan(value) else f"{value:{fmt}}{unit}"


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def markdown(record: WeightsRecord, results: list[Results], base: Path, image: Path) -> str:
    """The README block; paths are written relative to ``base`` (the README's folder)."""
    lines = ["<!-- written by mvic-publish; edit the results, not this block -->",
             (f"`{record.name}` ({record.model}, {record.metric}, sha256 `{record.sha256[:12]}…`), "
              "measured by mvic-eval (real bytes, headers included; MVIC joint = the group decoded together).")]
    for res in results:
        lines += ["", f"**{res.label}** (`{_relative(res.path, base)}`)", "",
                  "| rate index | bpp | PSNR dB | MS-SSIM | encode s/view | decode s/group |", "|---|---|---|---|---|---|"]
        lines += [f"| {int(r.setting)} | {r.bpp:.4f} | {r.psnr_db:.2f} | {_f(r.ms_ssim, '.4f')} | "
                  f"{r.encode_s_per_view:.3f} | {_f(r.decode_s_per_group, '.2f')} |"
                  for r in sorted(res.codec("mvic-joint"), key=lambda r: r.setting)]
        lines += ["", f"| Bjøntegaard vs {ANCHOR} | BD-rate PSNR | BD-rate MS-SSIM | BD-PSNR dB |", "|---|---|---|---|"]
        for name in res.bd["psnr"]:
            shown = f"{name} (vs mvic-separate)" if name in ("joint-vs-separate", "jct-vs-separate") else name
            figures = [_f(res.bd[key].get(name, math.nan), fmt, unit)
                       for key, fmt, unit in zip(BD_KEYS, ("+.1f", "+.1f", "+.2f"), (" %", " %", ""))]
            lines.append(f"| {shown} | {' | '.join(figures)} |")
        if res.unavailable:
            lines.append(f"\nNot run (encoder missing from this ffmpeg): {', '.join(res.unavailable)}.")
    lines += ["", "Negative BD-rate = fewer bits for the same quality; n/a = the curves do not overlap.", "",
              f"![Rate-distortion curves of {record.name}]({_relative(image, base)})"]
    return "\n".join(lines)


def update_readme(readme: Path, name: str, block: str) -> bool:
    """Replace the text between the markers; False (nothing written) when the README lacks them."""
    begin, end = f"<!-- rd:{name}:begin -->", f"<!-- rd:{name}:end -->"
    text = readme.read_text()
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        return False
    head, rest = text.split(begin)
    new = f"{head}{begin}\n{block}\n{end}{rest.split(end)[1]}"
    if new != text:
        readme.write_text(new)
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvic-publish", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True, help="shipped weights file (in shared/codec/weights/)")
    p.add_argument("--results", nargs="+", required=True, metavar="LABEL=DIR",
                   help="dataset label = mvic-eval output folder (or its results.json)")
    p.add_argument("--readme", type=Path, default=Path("README.md"), help="README holding the rd:NAME markers")
    p.add_argument("--plot", type=Path, help="figure to write (default docs/rd-NAME.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    pairs = [item.partition("=") for item in args.results]
    if any(not label or not sep or not where for label, sep, where in pairs):
        parser.error("--results takes LABEL=DIR pairs, e.g. synthetic=results/synth")
    if len({label for label, _, _ in pairs}) != len(pairs):
        parser.error("--results labels must differ")
    try:
        record = find_record(args.weights)
        results = [load_results(label, Path(where)) for label, _, where in pairs]
        if not args.readme.is_file():
            raise ResultsError(f"README {args.readme} does not exist; pass --readme")
    except (MVICError, OSError) as exc:
        print(f"mvic-publish: error: {exc}", file=sys.stderr)
        return 1
    record = replace(record, measured=measured_points(results))
    print(f"{write_records(record)}: {record.name} now holds {len(record.measured)} measured points")
    plot_path = args.plot or Path("docs") / f"rd-{record.name}.png"
    plot(results, plot_path, record.name)
    print(f"{plot_path}: RD curves")
    block = markdown(record, results, args.readme.parent, plot_path)
    if update_readme(args.readme, record.name, block):
        print(f"{args.readme}: RD block of {record.name} updated")
        return 0
    print(block)
    print(f"mvic-publish: {args.readme} has no single <!-- rd:{record.name}:begin --> ... <!-- rd:{record.name}:end -->"
          " pair; add both lines where the tables belong (the block is above) and run again", file=sys.stderr)
    return 1
