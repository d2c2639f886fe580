"""``mvic-rig``: write and check the cameras' calibration the server's fusion reads (``decode.rig``).

    mvic-rig wildtrack /data/wildtrack -o rig.yaml   # WildTrack's calibrations/ -> a rig of C1..C7
    mvic-rig show rig.yaml --size 1080x1920           # the cameras, and how much ground each pair shares

WildTrack ships each camera's calibration as OpenCV XML: ``calibrations/intrinsic_zero/intr_<cam>.xml`` (the
``camera_matrix`` of the undistorted frames) and ``calibrations/extrinsic/extr_<cam>.xml`` (``rvec``, ``tvec`` in
cm; the ground is z = 0), for the cameras CVLab1..4, IDIAP1..3, which are C1..C7 in that order, of 1920x1080
frames. Every file is read with a size cap and checked like any rig (``mvic.shared.rig``).
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mvic.shared.errors import ConfigError
from mvic.shared.fileio import write_atomic
from mvic.shared.rig import Rig, load_rig, parse_rig, rig_to_yaml, sees_shared_ground

WILDTRACK_CAMERAS = ("CVLab1", "CVLab2", "CVLab3", "CVLab4", "IDIAP1", "IDIAP2", "IDIAP3")
WILDTRACK_SIZE = [1920, 1080]
MAX_XML_BYTES = 1 << 20


def _xml(path: Path) -> ET.Element:
    try:
        if path.stat().st_size > MAX_XML_BYTES:
            raise ConfigError(f"{path}: over {MAX_XML_BYTES} bytes; a calibration file is a few hundred")
        return ET.fromstring(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc}); is this WildTrack's root?") from None
    except ET.ParseError as exc:
        raise ConfigError(f"{path}: not valid XML ({exc})") from None


def _numbers(node: ET.Element | None, count: int, where: str) -> list[float]:
    try:
        values = [float(v) for v in (node.text or "").split()] if node is not None else []
    except ValueError:
        values = []
    if len(values) != count:
        raise ConfigError(f"{where}: expected {count} numbers")
    return values


def wildtrack_rig(root: Path) -> Rig:
    """The WildTrack cameras' rig from ``root/calibrations``; ConfigError naming the file that is wrong."""
    cameras = {}
    for i, name in enumerate(WILDTRACK_CAMERAS):
        intr_path = root / "calibrations" / "intrinsic_zero" / f"intr_{name}.xml"
        extr_path = root / "calibrations" / "extrinsic" / f"extr_{name}.xml"
        matrix = _xml(intr_path).find("camera_matrix")
        k = _numbers(None if matrix is None else matrix.find("data"), 9, f"{intr_path}: camera_matrix/data")
        extr = _xml(extr_path)
        cameras[f"C{i + 1}"] = {
            "size": WILDTRACK_SIZE, "intrinsics": np.reshape(k, (3, 3)).tolist(),
            "rotation": _numbers(extr.find("rvec"), 3, f"{extr_path}: rvec"),
            "translation": _numbers(extr.find("tvec"), 3, f"{extr_path}: tvec")}
    return parse_rig({"cameras": cameras}, f"WildTrack rig from {root}")


def _transform(hom: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) points through a homography (cv2.perspectiveTransform without loading cv2)."""
    mapped = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ hom.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return mapped[:, :2] / mapped[:, 2:]


def shared_ground(rig: Rig, a: str, b: str, height: int, width: int, step: int = 8) -> float:
    """The share of camera ``a``'s pixels (every ``step``-th) that look at the ground where camera ``b`` sees it."""
    ga, gb = rig.ground(a, height, width), rig.ground(b, height, width)
    if ga is None or gb is None:
        return 0.0
    ys, xs = np.mgrid[0:height:step, 0:width:step]
    pixels = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    there = _transform(gb @ np.linalg.inv(ga), pixels)
    seen = sees_shared_ground(ga, gb, pixels) & (there[:, 0] >= 0) & (there[:, 0] <= width - 1) \
        & (there[:, 1] >= 0) & (there[:, 1] <= height - 1)
    return float(seen.mean())


def _show(rig: Rig, height: int, width: int) -> None:
    ids = list(rig.cameras)
    print(f"{len(ids)} cameras, ground at z = {rig.ground_z:g}; images of {height}x{width}")
    for cid, cal in rig.cameras.items():
        centre = -cal.rotation.T @ cal.translation
        print(f"  {cid}: calibrated for {cal.size[0]}x{cal.size[1]}, centre ({', '.join(f'{c:.2f}' for c in centre)})"
              f"{'' if rig.ground(cid, height, width) is not None else ' - another aspect ratio: left out'}")
    print("share of the row camera's view that shows ground the column camera sees:")
    print("      " + "".join(f"{c:>8}" for c in ids))
    for a in ids:
        print(f"{a:>6}" + "".join(f"{'-' if a == b else f'{shared_ground(rig, a, b, height, width):.2f}':>8}"
                                   for b in ids))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvic-rig", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wildtrack", help="WildTrack's calibrations/ as a rig of C1..C7")
    w.add_argument("root", type=Path, help="the WildTrack folder holding calibrations/")
    w.add_argument("-o", "--output", type=Path, default=Path("rig.yaml"))
    s = sub.add_parser("show", help="print a rig's cameras and the ground each pair shares")
    s.add_argument("rig", type=Path)
    s.add_argument("--size", default="", help="HxW of the images (default: each rig's first camera's)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "wildtrack":
            rig = wildtrack_rig(args.root)
            write_atomic(args.output, rig_to_yaml(rig).encode())
            print(f"wrote {args.output}: {len(rig.cameras)} cameras (C1..C7 = {', '.join(WILDTRACK_CAMERAS)})")
            return 0
        rig = load_rig(args.rig)
        if args.size:
            height, width = (int(v) for v in args.size.lower().split("x"))
        else:
            width, height = next(iter(rig.cameras.values())).size
        _show(rig, height, width)
        return 0
    except ConfigError as exc:
        print(f"mvic-rig: {exc}", file=sys.stderr)
        return 2
    except ValueError:
        print(f"mvic-rig: --size must be HxW, e.g. 1080x1920, got {args.size!r}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mvic-rig: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
