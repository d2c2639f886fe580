"""Sources: image folder, video file (written with OpenCV), synthetic view; open_source's choice."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mvic.node.config import SourceConfig, SyntheticConfig
from mvic.node.sources import (
    ImageFolderSource,
    SourceError,
    SyntheticSource,
    VideoSource,
    open_source,
    synthetic_camera_index,
)
from mvic.shared.scene import Scene, SceneConfig


def colour_frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """RGB frames with a distinct flat colour each, easy to recognise after lossy video coding."""
    return [np.full((h, w, 3), (40 * i % 256, 255 - 30 * i % 256, 100), np.uint8) for i in range(n)]


def read_all(source) -> list[np.ndarray]:
    source.open()
    out = []
    while (img := source.read()) is not None:
        out.append(img)
    source.close()
    return out


def test_image_folder_in_name_order_rgb(tmp_path):
    frames = colour_frames(3)
    for i, rgb in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "0001b.png").write_bytes(b"broken")  # unreadable: skipped with a warning
    got = read_all(ImageFolderSource(tmp_path))
    assert len(got) == 3
    for a, b in zip(got, frames):
        assert a.dtype == np.uint8 and a.shape == (48, 64, 3)
        np.testing.assert_array_equal(a, b)


def test_video_file_frames_and_resume_after_reopen(tmp_path):
    path = tmp_path / "cam.avi"
    frames = colour_frames(6)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    assert writer.isOpened()
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    source = open_source(SourceConfig(uri=str(path)), "C1")
    assert isinstance(source, VideoSource) and not source.live
    got = read_all(source)
    assert len(got) == 6 and got[0].shape == (48, 64, 3)
    for a, b in zip(got, frames):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 6  # MJPG is lossy
    source.rewind()
    source.open()
    source.read(), source.read()
    source.close()
    source.open()  # a reopen after an error goes on where it stopped
    third = source.read()
    assert np.abs(third.astype(int) - frames[2].astype(int)).mean() < 6
    source.close()


def test_synthetic_source_is_this_cameras_view_of_the_scene():
    cfg = SceneConfig(seed=3, cameras=3, height=32, width=48)
    source = SyntheticSource(cfg, synthetic_camera_index("C2"))
    source.open()
    views = [source.read() for _ in range(2)]
    scene = Scene(cfg)
    np.testing.assert_array_equal(views[1], scene.render(1)[1])
    np.testing.assert_array_equal(views[0], scene.render_view(0, 1))


def test_open_source_choices(tmp_path):
    synth = open_source(SourceConfig(synthetic=SyntheticConfig(cameras=7, height=16, width=16)), "C7")
    assert isinstance(synth, SyntheticSource) and synth.camera_index == 6
    assert isinstance(open_source(SourceConfig(uri=str(tmp_path)), "C1"), ImageFolderSource)
    assert open_source(SourceConfig(uri="0"), "C1").live
    assert open_source(SourceConfig(uri="rtsp://127.0.0.1:1/none"), "C1").live
    with pytest.raises(SourceError, match="neither"):
        open_source(SourceConfig(uri=str(tmp_path / "missing.mp4")), "C1")
    with pytest.raises(SourceError, match="C<n>"):
        open_source(SourceConfig(), "lobby")
    with pytest.raises(SourceError, match="outside"):
        open_source(SourceConfig(synthetic=SyntheticConfig(cameras=3)), "C5")
