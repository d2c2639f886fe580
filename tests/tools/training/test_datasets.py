"""Dataset layouts of the paper, on tiny fake trees; WildTrack extraction from real (tiny) videos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mvic.tools.training import datasets as ds


def _png(path: Path, h: int = 20, w: int = 30, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def test_wildtrack_split_by_frame_order(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "WILDTRACK_TRAIN", 3)
    monkeypatch.setattr(ds, "WILDTRACK_TEST", 1)
    for cam in ds.WILDTRACK_CAMERAS:
        for n in (0, 1, 2, 10, 11):  # integer stems, not zero-padded: 10 sorts after 2
            _png(tmp_path / "images" / cam / f"{n}.png", value=n)
    train, test = ds.WildTrackFrames(tmp_path, "train"), ds.WildTrackFrames(tmp_path, "test")
    assert len(train) == 3 and len(test) == 1
    group = test.group(0)
    assert group.shape == (7, 20, 30, 3) and (group == 10).all()
    with pytest.raises(ValueError, match="split"):
        ds.WildTrackFrames(tmp_path, "val")


def test_instereo2k_any_depth_and_cityscapes_crop(tmp_path):
    for rel in ("train/part1/0001", "train/part2/0002", "test/0100"):
        _png(tmp_path / "is" / rel / "left.png")
        _png(tmp_path / "is" / rel / "right.png")
    assert len(ds.InStereo2K(tmp_path / "is", "train")) == 2
    assert ds.InStereo2K(tmp_path / "is", "test").group(0).shape == (2, 20, 30, 3)
    _png(tmp_path / "cs/leftImg8bit/train/aachen/a_000001_leftImg8bit.png", 600, 400)
    _png(tmp_path / "cs/rightImg8bit/train/aachen/a_000001_rightImg8bit.png", 600, 400)
    _png(tmp_path / "cs/leftImg8bit/train/aachen/b_000002_leftImg8bit.png", 600, 400)  # no right view: skipped
    city = ds.Cityscapes(tmp_path / "cs", "train")
    assert len(city) == 1 and city.group(0).shape == (2, 600 - 64 - 256, 400 - 256, 3)


def test_extract_wildtrack_one_frame_per_second(tmp_path):
    videos = []
    for k in range(7):
        path = tmp_path / f"cam{k + 1}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 4.0, (64, 48))
        for i in range(10):
            writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
        writer.release()
        videos.append(path)
    counts = ds.extract_wildtrack(videos, tmp_path / "wt")
    assert counts == {f"C{k}": 3 for k in range(1, 8)}  # frames 0, 4, 8 at 4 fps
    assert sorted(p.name for p in (tmp_path / "wt/images/C3").iterdir()) == ["0.png", "1.png", "2.png"]
    with pytest.raises(OSError, match="cannot open video"):
        ds.extract_wildtrack([tmp_path / "missing.mp4"], tmp_path / "x")
