"""The held-out real set: building a folder from (fake) sources, reading it back, and mvic-eval on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mvic.tools.evaluation import baselines as bl
from mvic.tools.evaluation import stereo_photos as sp


def _fake_views(seed: int, sizes=((50, 75), (45, 80))) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    return [np.ascontiguousarray(base[i:i + h, 2 * i:2 * i + w]) for i, (h, w) in enumerate(sizes)]


@pytest.fixture
def fake_set(tmp_path, monkeypatch):
    monkeypatch.setitem(sp.LOADERS, "fake", lambda source, cache: _fake_views(len(source.name)))
    sources = tuple(sp.PairSource(name, "fake", "fake-pkg", (name,), "CC0-1.0", "test") for name in ("a", "bb"))
    root = tmp_path / "evaldata"
    sp.build(root, sources, max_side=64, cache=tmp_path / "cache")
    return root


def test_equalise_shrinks_then_crops_one_window():
    views = sp.equalise(_fake_views(0), max_side=64)
    assert {v.shape for v in views} == {(32, 56, 3)}  # x0.8: 40x60 and 36x64, common 36x60, multiples of 8
    same = sp.equalise([np.zeros((17, 30, 3), np.uint8)] * 2, max_side=100)
    assert same[0].shape == (16, 24, 3)
    with pytest.raises(ValueError):
        sp.equalise([np.zeros((5, 30, 3), np.uint8)], max_side=100)


def test_source_reads_built_folder(fake_set):
    manifest = json.loads((fake_set / sp.MANIFEST).read_text())
    assert [g["group"] for g in manifest["groups"]] == ["a", "bb"] and manifest["held_out"]
    assert all(g["licence"] == "CC0-1.0" and g["original_sizes_hw"] == [[50, 75], [45, 80]]
               for g in manifest["groups"])
    source = sp.StereoPhotoGroups(fake_set)
    assert len(source) == 2 and source.cameras == list(sp.VIEWS)
    group = source.group(1)
    assert group.shape == (2, 32, 56, 3) and group.dtype == np.uint8
    assert np.array_equal(group[0], sp.equalise(_fake_views(2), 64)[0])  # PNG is lossless, RGB order kept


def test_source_without_manifest_and_errors(fake_set, tmp_path):
    (fake_set / sp.MANIFEST).unlink()
    assert len(sp.StereoPhotoGroups(fake_set)) == 2
    with pytest.raises(FileNotFoundError, match="mvic-eval-data build"):
        sp.StereoPhotoGroups(tmp_path / "missing")


def test_mvic_eval_on_stereo_photos_skips_missing_encoder(fake_set, tiny_weights, tmp_path, monkeypatch, capsys):
    from mvic.tools.evaluation.evaluate import main

    monkeypatch.setattr(bl, "ffmpeg_encoders", lambda: frozenset({"libx265"}))
    out = tmp_path / "eval"
    assert main(["--weights", str(tiny_weights["test-tiny-fast"]), "--data", "stereo-photos", "--root",
                 str(fake_set), "--groups", "1", "--baselines", "jpeg", "vvc-intra-420", "-o", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["codec"] for r in res["rows"]} == {"mvic-joint", "mvic-joint-jct", "mvic-separate", "jpeg"}
    assert "libvvenc" in res["unavailable_baselines"]["vvc-intra-420"]
    assert "vvc-intra-420 unavailable" in capsys.readouterr().out
