"""Sources: image folder, video file (written with OpenCV), synthetic view; open_source's choice."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mvic.node import sources
from mvic.node.config import SourceConfig, SyntheticConfig
from mvic.node.sources import (
    ImageFolderSource,
    SourceError,
    SyntheticSource,
    VideoSource,
    fit_within,
    open_source,
    synthetic_camera_index,
)
from mvic.shared.scene import Scene, SceneConfig
from tests.node.fakes import frame_number, write_indexed_video


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


# ------------------------------------------------------------------------------- sampling a file on its timeline
def sampled(source, count: int = 1000) -> list[int]:
    source.open()
    out = []
    while len(out) < count and (image := source.read()) is not None:
        out.append(frame_number(image))
    source.close()
    return out


@pytest.fixture(params=[("MJPG", "avi"), ("mp4v", "mp4")], ids=["mjpg", "mp4v"])
def video30(request, tmp_path):
    """96 frames at 30 fps (3.2 s), each showing its own number; MJPG is intra only, mp4v has inter frames."""
    fourcc, ext = request.param
    path = tmp_path / f"indexed.{ext}"
    write_indexed_video(path, 96, 30.0, fourcc)
    return path


def test_native_timeline_takes_the_frame_at_i_over_fps(video30):
    source = open_source(SourceConfig(uri=str(video30), fps=2.0), "C1")  # file_timeline native is the default
    assert sampled(source) == [0, 15, 30, 45, 60, 75, 90]  # every 15th frame of a 30 fps file, then its end
    faster = open_source(SourceConfig(uri=str(video30), fps=60.0), "C1")
    assert sampled(faster, 7) == [0, 0, 1, 1, 2, 2, 3]  # above the native rate a frame is taken twice
    faster.seek(1)
    faster.open()
    faster._capture = spy = SeekSpy(faster._capture)
    assert [frame_number(faster.read()) for _ in range(4)] == [0, 1, 1, 2]
    assert not spy.seeks and spy.grabs == 0  # a repeated frame is not decoded again
    faster.close()


def test_sequential_timeline_reads_consecutive_frames(video30):
    source = open_source(SourceConfig(uri=str(video30), fps=2.0, file_timeline="sequential"), "C1")
    assert sampled(source) == list(range(96))
    as_fast = open_source(SourceConfig(uri=str(video30), fps=0), "C1")  # fps 0: no timeline to sample
    assert sampled(as_fast, 5) == [0, 1, 2, 3, 4]


class SeekSpy:
    """Wraps a cv2.VideoCapture and counts seeks and grabs."""

    def __init__(self, capture):
        self.capture, self.seeks, self.grabs = capture, [], 0

    def set(self, prop, value):
        self.seeks.append(value)
        return self.capture.set(prop, value)

    def grab(self):
        self.grabs += 1
        return self.capture.grab()

    def __getattr__(self, name):
        return getattr(self.capture, name)


def test_short_skips_grab_long_skips_seek_to_the_same_frames(video30, monkeypatch):
    # 14 frames skipped between captures; the 6th grab after frame 90 finds the end of the file
    for seek_after, seeks, grabs in [(100, [], 14 * 6 + 6), (4, [15, 30, 45, 60, 75, 90, 105], 0)]:
        monkeypatch.setattr(sources, "SEEK_AFTER_FRAMES", seek_after)
        source = open_source(SourceConfig(uri=str(video30), fps=2.0), "C1")
        source.open()
        source._capture = spy = SeekSpy(source._capture)
        got = []
        while (image := source.read()) is not None:
            got.append(frame_number(image))
        source.close()
        assert got == [0, 15, 30, 45, 60, 75, 90]
        assert spy.seeks == seeks and spy.grabs == grabs, seek_after


def test_seek_and_reopen_continue_on_the_timeline(video30):
    source = open_source(SourceConfig(uri=str(video30), fps=2.0), "C1")
    source.seek(3)  # a restarted node resumes at capture 3: the frame at 1.5 s
    source.open()
    assert frame_number(source.read()) == 45
    source.close()
    source.open()  # a reopen after an error goes on with capture 4
    assert frame_number(source.read()) == 60
    source.rewind()  # loop: back to capture 0 on the open file
    assert frame_number(source.read()) == 0
    source.close()
    folder_like = SyntheticSource(SceneConfig(seed=1, cameras=2, height=16, width=16), 0)
    folder_like.seek(5)
    folder_like.open()
    np.testing.assert_array_equal(folder_like.read(), Scene(folder_like.config).render_view(5, 0))


# ---------------------------------------------------------------------------------------------- resizing
@pytest.mark.parametrize("shape, max_side, expected", [
    ((1080, 1920, 3), 1280, (720, 1280, 3)),
    ((1920, 1080, 3), 1280, (1280, 720, 3)),  # portrait: the long side is the height
    ((480, 640, 3), 1280, (480, 640, 3)),  # fits already: untouched
    ((480, 640, 3), 0, (480, 640, 3)),  # 0 = off
    ((101, 303, 3), 100, (33, 100, 3)),
])
def test_fit_within_keeps_the_aspect_ratio(shape, max_side, expected):
    image = np.zeros(shape, np.uint8)
    out = fit_within(image, max_side)
    assert out.shape == expected and out.dtype == np.uint8
    if expected == shape:
        assert out is image


def test_fit_within_averages_area():
    image = np.zeros((4, 8, 3), np.uint8)
    image[:, ::2] = 200  # stripes one pixel wide: INTER_AREA averages them to a flat 100
    np.testing.assert_array_equal(fit_within(image, 4), np.full((2, 4, 3), 100, np.uint8))
