"""``mvic-eval``: rate-distortion of MVIC (joint and separate decoding) and classical codecs on the same groups.

    mvic-eval --weights W.safetensors --data synthetic --groups 4 -o results/eval
    mvic-eval --weights W.safetensors --data stereo-photos --root evaldata --groups 100 -o results/real
    mvic-eval --weights W.safetensors --data wildtrack --root /data/wildtrack --split test -o results/wt

bpp comes from real bytes (MVIC packets with their headers, whole JPEG/WebP/JPEG XL files, raw HEVC/AV1/VVC
streams) over all pixels of all views; PSNR is on 8-bit images, per view, averaged; MS-SSIM (pytorch-msssim,
data_range 255) where every side is > 160 px. Joint vs separate: the same MVIC packets decoded as a group and one
view at a time (K = 1). ``--fusion`` (default both): the joint rows with the decoder's view fusion (``mvic-joint``,
the product's decoder) and, with ``both``, also without it (``mvic-joint-jct``: the learned JCT alone). A baseline whose encoder this ffmpeg lacks is reported and skipped (results.json lists it).
BD-rates (PCHIP) are against x265 intra 4:4:4. Writes results.json, results.csv and rd.png; results.json holds
``groups_sha256``, a digest of every evaluated view, so ``--baselines-from DIR`` can take the classical codecs' rows
from an earlier run on the very same images (other weights) instead of coding them again, and refuses any other.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from pytorch_msssim import ms_ssim

from mvic.shared.bitstream import pack, unpack
from mvic.shared.codec.registry import load_model
from mvic.shared.codec.view_fusion import NO_FUSION, FusionOptions
from mvic.shared.errors import ConfigError
from mvic.shared.rig import Rig, load_rig
from mvic.tools.evaluation import baselines as bl
from mvic.tools.evaluation.bdrate import bd_quality, bd_rate
from mvic.tools.evaluation.stereo_photos import StereoPhotoGroups
from mvic.shared.scene import SceneConfig
from mvic.tools.training.config import DataConfig
from mvic.tools.training.data import SyntheticGroups
from mvic.tools.training.sources import make_source

BASELINES = bl.BASELINES  # name -> Baseline(code, settings, encoder); see baselines.py
ANCHOR = "x265-intra-444"


@dataclass(frozen=True)
class RDRow:
    codec: str
    setting: float
    bpp: float
    psnr_db: float
    ms_ssim: float  # NaN where the views are too small for 5 scales
    encode_s_per_view: float
    decode_s_per_group: float


def _quality(refs: list[np.ndarray], decs: list[np.ndarray]) -> tuple[float, float]:
    p = float(np.mean([bl.psnr(r, d) for r, d in zip(refs, decs)]))
    if min(refs[0].shape[:2]) <= 160:
        return p, float("nan")
    a = torch.from_numpy(np.stack(refs)).permute(0, 3, 1, 2).double()
    b = torch.from_numpy(np.stack(decs)).permute(0, 3, 1, 2).double()
    return p, float(ms_ssim(a, b, data_range=255.0))


def joint_rows(fusion: str, rig: Rig | None = None) -> dict[str, FusionOptions]:
    """--fusion: the joint decodings measured, by row name (the fusion with the cameras' calibration, if any)."""
    fused = FusionOptions(rig=rig)
    return {"on": {"mvic-joint": fused}, "off": {"mvic-joint": NO_FUSION},
            "both": {"mvic-joint": fused, "mvic-joint-jct": NO_FUSION}}[fusion]


def evaluate(model, groups: list[list[np.ndarray]], baselines: list[str], precision: str = "auto",
             fusion: str = "both", rig: Rig | None = None) -> list[RDRow]:
    """Every group's views are cameras C1, C2, ... in order (the ids ``rig`` knows them by)."""
    rows = []
    pixels = sum(v.shape[0] * v.shape[1] for g in groups for v in g)
    fusions = joint_rows(fusion, rig)
    for rate in range(model.spec.num_rates):
        nbytes, enc_t, dec_alone_t = 0, 0.0, 0.0
        dec_t = dict.fromkeys(fusions, 0.0)
        q_joint: dict[str, list] = {name: [] for name in fusions}
        q_alone = []
        for group in groups:
            t0 = time.perf_counter()
            packets = [pack(model.compress_view(v, rate, camera_id=f"C{i + 1}", precision=precision))
                       for i, v in enumerate(group)]
            enc_t += time.perf_counter() - t0
            nbytes += sum(len(p) for p in packets)
            views = [unpack(p) for p in packets]
            for name, options in fusions.items():
                t0 = time.perf_counter()
                joint = [d.image for d in model.decompress(views, fusion=options)]
                dec_t[name] += time.perf_counter() - t0
                q_joint[name].append(_quality(group, joint))
            t0 = time.perf_counter()
            alone = [model.decompress([v])[0].image for v in views]
            dec_alone_t += time.perf_counter() - t0
            q_alone.append(_quality(group, alone))
        n_views = sum(len(g) for g in groups)
        decodings = [(name, q_joint[name], dec_t[name]) for name in fusions]
        for name, q, t in (*decodings, ("mvic-separate", q_alone, dec_alone_t)):
            rows.append(RDRow(name, rate, 8 * nbytes / pixels, float(np.mean([x[0] for x in q])),
                              float(np.mean([x[1] for x in q])), enc_t / n_views, t / len(groups)))
    for name in baselines:
        codec, settings = BASELINES[name].code, BASELINES[name].settings
        for s in settings:
            nbytes, q, enc_t = 0, [], 0.0
            for group in groups:
                t0 = time.perf_counter()
                coded = codec(group, s)
                enc_t += time.perf_counter() - t0
                nbytes += coded.num_bytes
                q.append(_quality(group, coded.images))
            rows.append(RDRow(name, s, 8 * nbytes / pixels, float(np.mean([x[0] for x in q])),
                              float(np.mean([x[1] for x in q])), enc_t / sum(len(g) for g in groups), float("nan")))
    return rows


def _msssim_db(value: float) -> float:
    return float(-10 * np.log10(max(1e-12, 1 - value)))


QUALITY = {  # how a row's quality is read for each Bjontegaard table
    "psnr": lambda r: r.psnr_db,
    "ms-ssim-db": lambda r: _msssim_db(r.ms_ssim),  # -10 log10(1 - MS-SSIM), the usual dB form
}


def bd_table(rows: list[RDRow], anchor: str = ANCHOR) -> dict[str, dict[str, float]]:
    """Bjontegaard figures of every codec against ``anchor`` and of joint vs separate decoding.

    {"psnr": BD-rate %, "ms-ssim-db": BD-rate %, "bd-psnr-db": PSNR gain at equal rate}; NaN where the curves do
    not overlap (in quality for BD-rate, in rate for BD-PSNR).
    """
    by: dict[str, list[RDRow]] = {}
    for r in rows:
        by.setdefault(r.codec, []).append(r)
    pairs = [(name, name, anchor) for name in by if name != anchor and anchor in by]  # (label, test, reference)
    for label, joint in (("joint-vs-separate", "mvic-joint"), ("jct-vs-separate", "mvic-joint-jct")):
        if joint in by and "mvic-separate" in by:
            pairs.append((label, joint, "mvic-separate"))
    out: dict[str, dict[str, float]] = {key: {} for key in (*QUALITY, "bd-psnr-db")}
    for name, tested, ref in pairs:
        test = by[tested]
        ra, rt = [r.bpp for r in by[ref]], [r.bpp for r in test]
        for key, quality in QUALITY.items():
            try:
                out[key][name] = bd_rate(ra, [quality(r) for r in by[ref]], rt, [quality(r) for r in test])
            except ValueError:
                out[key][name] = float("nan")
        try:
            out["bd-psnr-db"][name] = bd_quality(ra, [r.psnr_db for r in by[ref]], rt, [r.psnr_db for r in test])
        except ValueError:
            out["bd-psnr-db"][name] = float("nan")
    return out


def groups_digest(groups: list[list[np.ndarray]]) -> str:
    """sha256 over every view's shape and pixels, group by group: the identity of an evaluation's images."""
    digest = hashlib.sha256()
    for group in groups:
        digest.update(f"group {len(group)};".encode())
        for view in group:
            digest.update(f"{view.shape}{view.dtype};".encode())
            digest.update(np.ascontiguousarray(view).tobytes())
    return digest.hexdigest()


def reused_baselines(source: Path, digest: str, names: list[str]) -> list[RDRow]:
    """The rows of the classical codecs ``names`` from ``source`` (an mvic-eval folder or its results.json), which
    must have measured the same images (``groups_sha256``); ConfigError saying what to do otherwise."""
    path = source / "results.json" if source.is_dir() else source
    try:
        data = json.loads(path.read_text())
        rows = [RDRow(**r) for r in data["rows"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--baselines-from {source}: not an mvic-eval results.json ({exc})") from None
    if data.get("groups_sha256") != digest:
        raise ConfigError(f"--baselines-from {source} measured other images (groups_sha256 "
                          f"{str(data.get('groups_sha256'))[:16]}…, these are {digest[:16]}…): run mvic-eval with the "
                          "same --data, --root, --groups, --cameras, --size and --seed, or code the baselines here")
    taken = [r for r in rows if r.codec in names]
    missing = sorted(set(names) - {r.codec for r in taken})
    if missing:
        raise ConfigError(f"--baselines-from {source} has no rows of {', '.join(missing)}; drop them from --baselines "
                          "or code them here")
    return taken


def write_outputs(rows: list[RDRow], bd: dict[str, dict[str, float]], out: Path,
                  unavailable: dict[str, str] | None = None, digest: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"rows": [asdict(r) for r in rows], "bjontegaard": bd,
                                                  "unavailable_baselines": unavailable or {},
                                                  "groups_sha256": digest}, indent=1, allow_nan=True))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(asdict(rows[0])))
        w.writerows([list(asdict(r).values()) for r in rows])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in dict.fromkeys(r.codec for r in rows):
        rs = sorted((r for r in rows if r.codec == name), key=lambda r: r.bpp)
        ax.plot([r.bpp for r in rs], [r.psnr_db for r in rs], marker="o", label=name)
    ax.set_xlabel("bpp (real bytes)")
    ax.set_ylabel("PSNR (dB, 8-bit RGB)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "rd.png", dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvic-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True, help="MVIC weights (.safetensors)")
    p.add_argument("--data", default="synthetic",
                   help="synthetic | stereo-photos | folder | wildtrack | instereo2k | cityscapes")
    p.add_argument("--root", default="", help="dataset root for non-synthetic data (stereo-photos: default evaldata, "
                                              "built by mvic-eval-data build -o evaldata)")
    p.add_argument("--split", default="test")
    p.add_argument("--groups", type=int, default=4, help="number of view groups to evaluate")
    p.add_argument("--cameras", type=int, default=7, help="synthetic: cameras per group")
    p.add_argument("--size", default="270x480", help="synthetic: HxW per view")
    p.add_argument("--seed", type=int, default=1000, help="synthetic: scene seed (keep it apart from training seeds)")
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=list(BASELINES))
    p.add_argument("--encode-precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="arithmetic of the camera-side transforms g_a, h_a (auto: bf16 where the CPU has it natively); "
                        "compare two runs to measure what a faster encoder costs in BD-rate")
    p.add_argument("--rig", default="", metavar="FILE|scene",
                   help="the cameras' calibration for the fusion (mvic.shared.rig YAML; its ids are C1, C2, ... in the "
                        "groups' order), or 'scene': the synthetic scene's own, as a calibrated installation's server "
                        "would read it (default: none)")
    p.add_argument("--fusion", default="both", choices=["both", "off", "on"],
                   help="the joint decoding with the view fusion (on), without (off), or both as two rows (mvic-joint, "
                        "mvic-joint-jct)")
    p.add_argument("--baselines-from", type=Path, default=None, metavar="DIR",
                   help="take the --baselines rows from an earlier mvic-eval of the same images (its results.json's "
                        "groups_sha256 must match) instead of coding them again")
    p.add_argument("-o", "--output", type=Path, default=Path("results/eval"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = load_model(args.weights)
    if args.rig == "scene" and args.data != "synthetic":
        build_parser().error("--rig scene is for --data synthetic; give the rig's file for other data")
    try:
        rig = load_rig(args.rig) if args.rig not in ("", "scene") else None
    except ConfigError as exc:
        build_parser().error(str(exc))
    if args.data == "synthetic":
        h, w = (int(s) for s in args.size.split("x"))
        source = SyntheticGroups(SceneConfig(seed=args.seed, cameras=args.cameras, height=h, width=w), args.groups)
        if args.rig == "scene":
            rig = source.rig()
    elif args.data == "stereo-photos":
        source = StereoPhotoGroups(args.root or "evaldata")
    else:
        source = make_source(DataConfig(kind=args.data, root=args.root, split=args.split, cameras=args.cameras), args.seed)
    n = min(args.groups, len(source))
    idx = np.linspace(0, len(source) - 1, n).round().astype(int)
    groups = [list(source.group(int(i))) for i in idx]
    digest = groups_digest(groups)
    reused: list[RDRow] = []
    if args.baselines_from is not None:
        try:
            reused = reused_baselines(args.baselines_from, digest, args.baselines)
        except ConfigError as exc:
            build_parser().error(str(exc))
    unavailable = {} if reused else {name: why for name in args.baselines if (why := bl.unavailable(name))}
    for name, why in unavailable.items():
        print(f"baseline {name} unavailable, skipped: {why}")
    coded = [] if reused else [b for b in args.baselines if b not in unavailable]
    rows = evaluate(model, groups, coded, args.encode_precision, args.fusion, rig) + reused
    bd = bd_table(rows)
    write_outputs(rows, bd, args.output, unavailable, digest)
    print(f"{'codec':<16}{'setting':>8}{'bpp':>9}{'PSNR':>8}{'MS-SSIM':>9}{'enc s/view':>11}")
    for r in rows:
        print(f"{r.codec:<16}{r.setting:>8g}{r.bpp:>9.4f}{r.psnr_db:>8.2f}{r.ms_ssim:>9.4f}{r.encode_s_per_view:>11.3f}")
    print(f"Bjontegaard vs {ANCHOR} (joint-vs-separate, jct-vs-separate: vs mvic-separate); PCHIP, NaN = no overlap")
    print(f"{'codec':<20}{'BD-rate PSNR':>14}{'BD-rate MS-SSIM':>17}{'BD-PSNR dB':>12}")
    for name in bd["psnr"]:
        print(f"{name:<20}{bd['psnr'][name]:>+13.1f}%{bd['ms-ssim-db'][name]:>+16.1f}%"
              f"{bd['bd-psnr-db'][name]:>+12.2f}")
    print(f"results in {args.output}/ (results.json, results.csv, rd.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
