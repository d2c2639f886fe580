"""``mvic-codec``: encode one view to a .mvic file (what a camera does), decode view groups jointly, print headers,
and run a round-trip demo on the bundled samples. ``main(argv) -> int`` so tests call it directly.

A multi-view group is made by encoding each camera's image of one moment with its own ``--camera`` and the same
``--capture-ns``; ``decode`` then groups the files by the server's rules (shared/codec/grouping.py).

torch, CompressAI and OpenCV are imported by the commands that run the model (encode, decode, demo), never at the
top: ``--help`` and ``info`` start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mvic.shared.bitstream import ViewBitstream, pack, unpack
from mvic.shared.codec.grouping import DEFAULT_TOLERANCE_NS, group_headers
from mvic.shared.errors import ConfigError, GroupError, MVICError, NoTrainedWeightsError
from mvic.shared.fileio import safe_name, write_atomic
from mvic.shared.model_table import DEFAULT_MODEL, MODELS_BY_NAME, spec_by_id, spec_by_name

if TYPE_CHECKING:
    import numpy as np

    from mvic.shared.codec.model import LDMIC


def _model_name(name: str) -> str:
    """--model: an architecture of the model table (an unknown name is a usage error listing the known ones)."""
    try:
        return spec_by_name(name).name
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvic-codec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp, with_model=True):
        if with_model:
            sp.add_argument("--model", default=DEFAULT_MODEL, type=_model_name,
                            help=f"architecture: {', '.join(MODELS_BY_NAME)} (default %(default)s)")
        sp.add_argument("--weights", type=Path, help="weights .safetensors (default: the installed trained weights)")
        sp.add_argument("--sha256", help="expected sha256 of --weights; refuse the file if it differs")
        sp.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")

    e = sub.add_parser("encode", help="encode one image (one camera view) into a .mvic file")
    e.add_argument("image", type=Path, help="input image (PNG/JPEG/...; converted to RGB)")
    e.add_argument("-o", "--output", type=Path, required=True, help="output .mvic file")
    e.add_argument("--rate", type=int, default=2, help="rate point index, 0 = lowest rate (default %(default)s)")
    e.add_argument("--camera", default="C1", help="camera id stored in the header")
    e.add_argument("--sequence", type=int, default=0, help="frame sequence number stored in the header")
    e.add_argument("--capture-ns", type=int, default=None, help="capture time in ns (default: now)")
    e.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="arithmetic of the analysis transforms: auto = bf16 where the CPU has it natively (AMX, "
                        "AVX512-BF16), else fp32; every choice decodes exactly (default %(default)s)")
    model_args(e)

    d = sub.add_parser("decode", help="decode .mvic files into PNGs, each timestamp's views jointly",
                       description="Groups the views by the fusion server's rules: each view joins the "
                                   "set whose first view is nearest in capture time, within --tolerance-ms, one view "
                                   "per camera; views of one size in a "
                                   "set are decoded jointly. Prints which views were decoded together.")
    d.add_argument("inputs", type=Path, nargs="+", help=".mvic files (one per camera and timestamp)")
    d.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for <camera>_<sequence>.png")
    d.add_argument("--tolerance-ms", type=float, default=DEFAULT_TOLERANCE_NS / 1e6,
                   help="capture times within this of a group's first view belong to it (default %(default)g, "
                        "the server's grouping.tolerance_ms)")
    d.add_argument("--unique-names", action="store_true",
                   help="name outputs <camera>_<sequence>_<file stem>.png, so views with the same camera and "
                        "sequence do not collide")
    d.add_argument("--device", default="cpu", help="torch device for decoding, e.g. cpu or cuda:0")
    d.add_argument("--no-fusion", action="store_true",
                   help="decode each set without the view fusion (the learned JCT alone)")
    d.add_argument("--rig", type=Path, metavar="FILE",
                   help="the cameras' calibration (mvic.shared.rig YAML, by camera id; mvic-scene writes one): the "
                        "fusion also aligns the ground between calibrated views")
    model_args(d, with_model=False)

    i = sub.add_parser("info", help="print the header of .mvic files")
    i.add_argument("inputs", type=Path, nargs="+")

    m = sub.add_parser("demo", help="round trip of a multi-view sample group at every rate point")
    m.add_argument("-o", "--output-dir", type=Path, default=Path("out/demo"), help="where to write PNGs")
    m.add_argument("--source", choices=["synthetic", "stereo"], default="synthetic",
                   help="synthetic: 3 cameras of the seeded synthetic scene (default); stereo: Middlebury pair")
    model_args(m)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return {"encode": _encode, "decode": _decode, "info": _info, "demo": _demo}[args.command](args)
    except NoTrainedWeightsError as exc:
        print(f"mvic-codec: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"mvic-codec: configuration error: {exc}", file=sys.stderr)
        return 2
    except (MVICError, OSError) as exc:
        print(f"mvic-codec: error: {exc}", file=sys.stderr)
        return 1


def _load(model_name: str, args) -> LDMIC:
    from mvic.shared.codec.registry import default_weights, load_model

    if args.weights is not None:
        return load_model(args.weights, sha256=args.sha256, model=model_name)
    return load_model(default_weights(model_name))


def _read_image(path: Path) -> np.ndarray:
    from mvic.shared.codec.images import read_rgb

    return read_rgb(path, "give a PNG/JPEG/BMP/TIFF file")


def _encode(args) -> int:
    model = _load(args.model, args)
    image = _read_image(args.image)
    t0 = time.perf_counter()
    view = model.compress_view(image, args.rate, camera_id=args.camera, sequence=args.sequence,
                               capture_ns=time.time_ns() if args.capture_ns is None else args.capture_ns,
                               precision=args.precision)
    elapsed = time.perf_counter() - t0
    data = pack(view)
    write_atomic(args.output, data)
    h, w = image.shape[:2]
    print(f"{args.output}: {len(data)} bytes, {8 * len(data) / (h * w):.4f} bpp ({h}x{w}, rate {args.rate}), "
          f"encode {elapsed * 1000:.0f} ms")
    return 0


def _read_views(paths: list[Path]) -> list[ViewBitstream]:
    return [unpack(p.read_bytes()) for p in paths]


def _output_names(paths: list[Path], views: list[ViewBitstream], unique: bool) -> list[str]:
    """``<camera>_<sequence>.png`` per view (``..._<file stem>.png`` with ``unique``); two views that would write one
    file are an error naming both, before anything is decoded."""
    seen: dict[Path, Path] = {}
    for path in paths:
        real = path.resolve()
        if real in seen:
            raise GroupError(f"{path} is given twice (also as {seen[real]}); give each view's file once")
        seen[real] = path
    names: dict[str, Path] = {}
    out = []
    for path, view in zip(paths, views):
        h = view.header
        name = f"{safe_name(h.camera_id)}_{h.sequence}" + (f"_{safe_name(path.stem)}" if unique else "") + ".png"
        if name in names:
            raise GroupError(
                f"{names[name]} and {path} are both camera {h.camera_id} sequence {h.sequence}: both would be "
                f"written to {name}. Encode each camera's views with its own --camera (and each frame with its "
                "own --sequence), or pass --unique-names to name the outputs after their files")
        names[name] = path
        out.append(name)
    return out


def _decode(args) -> int:
    import cv2

    from mvic.shared.codec.view_fusion import NO_FUSION, FusionOptions
    from mvic.shared.rig import load_rig

    fusion = NO_FUSION if args.no_fusion else FusionOptions(rig=load_rig(args.rig) if args.rig else None)
    views = _read_views(args.inputs)
    names = _output_names(args.inputs, views, args.unique_names)
    tolerance_ns = round(args.tolerance_ms * 1e6)
    headers = [v.header for v in views]
    sets = group_headers(headers, tolerance_ns)
    span_ns = max(h.capture_ns for h in headers) - min(h.capture_ns for h in headers)
    if span_ns > tolerance_ns:
        print(f"warning: the inputs' capture times span {span_ns / 1e9:.3f} s, more than the {args.tolerance_ms:g} ms "
              f"tolerance: they are not one timestamp and are decoded as {len(sets)} separate set(s)",
              file=sys.stderr)
    spec = spec_by_id(views[0].header.model_id)
    model = _load(spec.name, args).to(args.device)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for joint in sets:
        members = list(joint.members)
        decoded = model.decompress([views[i] for i in members], fusion=fusion)
        who = ", ".join(f"{headers[i].camera_id}#{headers[i].sequence}" for i in members)
        print(f"{'jointly' if len(members) > 1 else 'alone'}: {who} (captured at {joint.anchor_ns} ns, "
              f"{headers[members[0]].height}x{headers[members[0]].width})")
        for i, d in zip(members, decoded):
            out = args.output_dir / names[i]
            ok, png = cv2.imencode(".png", cv2.cvtColor(d.image, cv2.COLOR_RGB2BGR))
            write_atomic(out, png.tobytes())
            bpp = 8 * args.inputs[i].stat().st_size / (d.header.height * d.header.width)
            print(f"  {args.inputs[i]} -> {out} ({bpp:.4f} bpp)")
    elapsed = time.perf_counter() - t0
    print(f"decoded {len(views)} view(s) in {len(sets)} set(s) in {elapsed * 1000:.0f} ms on {args.device}")
    return 0


def _info(args) -> int:
    for path in args.inputs:
        data = path.read_bytes()
        h = unpack(data).header
        spec = spec_by_id(h.model_id)
        print(f"{path}: format v{h.version}, model {spec.name} (id {h.model_id:#06x}), weights {h.weights_hash.hex()}, "
              f"rate {h.rate_index}, camera {h.camera_id}, sequence {h.sequence}, capture_ns {h.capture_ns}, "
              f"{h.height}x{h.width} (+{h.pad_bottom} rows, +{h.pad_right} cols), {len(data)} bytes, "
              f"{8 * len(data) / (h.height * h.width):.4f} bpp, symbol crc {h.symbol_crc:08x}")
    return 0


def _demo_views(source: str) -> list[tuple[str, np.ndarray]]:
    if source == "stereo":
        from mvic.tools.samples import stereo_pair

        return stereo_pair()
    from mvic.shared.scene import Scene, SceneConfig

    scene = Scene(SceneConfig(seed=0, cameras=3, height=270, width=480))
    return [(cam.name, view) for cam, view in zip(scene.cameras, scene.render(0))]


def _demo(args) -> int:
    import tempfile

    import cv2
    import numpy as np
    import torch

    from mvic.shared.codec.images import psnr
    from mvic.shared.codec.model import LDMIC
    from mvic.shared.codec.registry import export_weights

    try:
        model = _load(args.model, args)
        weights = str(args.weights) if args.weights else f"installed {args.model} weights"
    except NoTrainedWeightsError as exc:
        print(f"NOTE: {exc}.\nNOTE: running with RANDOMLY INITIALISED weights (seed 0): the bitstreams are real "
              "and decode bit-exactly, but the pictures will not resemble the input until trained weights ship.")
        torch.manual_seed(0)
        model = LDMIC(spec_by_name(args.model))
        export_weights(model, Path(tempfile.mkdtemp()) / "untrained.safetensors")
        model.eval()
        weights = "RANDOM weights"
    views = _demo_views(args.source)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    print(f"model {model.spec.name} (N={model.spec.n}, M={model.spec.m}, {model.spec.context.value} context), "
          f"{len(views)} views {views[0][1].shape[1]}x{views[0][1].shape[0]}, {weights}")
    print(f"{'rate':>4} {'bpp':>7} {'PSNR joint':>10} {'PSNR alone':>10} {'enc ms/view':>11} {'dec ms (K)':>10}")
    for rate in range(model.spec.num_rates):
        t0 = time.perf_counter()
        packets = [pack(model.compress_view(img, rate, camera_id=cam, sequence=rate)) for cam, img in views]
        enc_ms = (time.perf_counter() - t0) * 1000 / len(views)
        t0 = time.perf_counter()
        joint = model.decompress([unpack(p) for p in packets])
        dec_ms = (time.perf_counter() - t0) * 1000
        alone = [model.decompress([unpack(p)])[0] for p in packets]
        pixels = sum(img.shape[0] * img.shape[1] for _, img in views)
        bpp = 8 * sum(len(p) for p in packets) / pixels
        psnr_j = np.mean([psnr(img, d.image) for (_, img), d in zip(views, joint)])
        psnr_a = np.mean([psnr(img, d.image) for (_, img), d in zip(views, alone)])
        print(f"{rate:>4} {bpp:>7.4f} {psnr_j:>10.2f} {psnr_a:>10.2f} {enc_ms:>11.0f} {dec_ms:>7.0f} ({len(views)})")
        for d in joint:
            out = args.output_dir / f"{d.header.camera_id}_rate{rate}.png"
            cv2.imwrite(str(out), cv2.cvtColor(d.image, cv2.COLOR_RGB2BGR))
    print(f"reconstructions written to {args.output_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
