"""Frame sources: where a camera's images come from. First hop of the data path.

Hop after: ``mvic.node.capture.Capture`` calls ``open``/``read``/``close`` under its watchdog (a call that takes
too long is treated as hung) and turns each image into a timestamped ``Frame``.

A source is anything with the small ``Source`` protocol below. ``open_source(uri, camera, config)`` picks one:

    ""                    the synthetic scene (mvic.shared.scene), this camera's view: C1..CK -> camera 0..K-1
    "0", "1"              a webcam index (OpenCV)                        live
    "rtsp://...", "http…" a network stream (OpenCV/FFmpeg)               live
    a folder              its images in name order (png, jpg, bmp, tif, webp)
    a file                a video file (OpenCV/FFmpeg)

Every source returns RGB ``uint8`` images of shape ``(H, W, 3)``; ``read`` returns ``None`` at the end of a finite
source. A live source never ends: a failed read there means the source is dead, and capture reopens it.

Finite sources count captures: each ``read`` is one capture, and ``seek(i)`` makes the next read capture i (a
restarted node resumes its schedule this way). A folder or the scene gives one item per capture. A video file with a
known frame rate is sampled on its own timeline (``source.file_timeline: native``): capture i takes the frame shown
at ``i / fps`` seconds, skipping frames with ``grab()`` or seeking when the skip is long, so ``--fps 2`` on a 60 fps
file takes every 30th frame; ``sequential`` (or an unknown rate, or fps 0) takes the next frame. Finite sources
remember their position, so a reopen after an error goes on where it stopped.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from mvic.node.config import SourceConfig
from mvic.node.errors import SourceError as SourceError  # re-exported: raised by every source
from mvic.shared.scene import Scene, SceneConfig

log = logging.getLogger(__name__)

SEEK_AFTER_FRAMES = 100  # a skip longer than this seeks instead of decoding the frames in between
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_SYNTHETIC_CAMERA = re.compile(r"^C(\d+)$")


class Source(Protocol):
    name: str  # for logs
    live: bool  # True: frames are timestamped at grab by the wall clock, a failed read means the source died

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def rewind(self) -> None: ...  # finite sources: back to capture 0 (loop)

    def seek(self, index: int) -> None: ...  # finite sources: the next read is capture ``index``

    def close(self) -> None: ...


def to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR / grey / BGRA image -> RGB uint8 (H, W, 3)."""
    if image.dtype != np.uint8:
        raise SourceError(f"source gave {image.dtype} pixels; MVIC codes 8-bit images: convert the source to 8 bits "
                          "per channel")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale ``image`` (H, W, C) so its long side is at most ``max_side`` (INTER_AREA, aspect ratio kept);
    returned as is when it already fits or ``max_side`` is 0."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (width, height)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class SyntheticSource:
    """This camera's view of the embedded synthetic scene; frame i shows the scene at time i / scene fps."""

    live = False

    def __init__(self, config: SceneConfig, camera_index: int):
        if not 0 <= camera_index < config.cameras:
            raise SourceError(f"camera index {camera_index} is outside the synthetic scene's {config.cameras} cameras; "
                              "raise source.synthetic.cameras or pick a lower C<n>")
        self.config = config
        self.camera_index = camera_index
        self.name = f"synthetic(seed={config.seed}, camera {camera_index + 1}/{config.cameras})"
        self._scene: Scene | None = None
        self._position = 0

    def open(self) -> None:
        if self._scene is None:
            self._scene = Scene(self.config)

    def read(self) -> np.ndarray | None:
        assert self._scene is not None, "open() first"
        image = self._scene.render_view(self._position, self.camera_index)
        self._position += 1
        return image

    def rewind(self) -> None:
        self._position = 0

    def seek(self, index: int) -> None:
        self._position = index

    def close(self) -> None:
        """The scene is kept: rendering state is pure, and building it again costs time."""


class ImageFolderSource:
    """The images of one folder, in name order; new files are picked up at the next reopen/rewind."""

    live = False

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.name = f"folder {self.folder}"
        self._files: list[Path] = []
        self._position = 0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"image folder {self.folder} does not exist; check --source (source.uri)")
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"image folder {self.folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); add some "
                              "or check --source")

    def read(self) -> np.ndarray | None:
        while self._position < len(self._files):
            path = self._files[self._position]
            self._position += 1
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                log.warning("skipping %s: not a readable image", path)
                continue
            return to_rgb(image)
        return None

    def rewind(self) -> None:
        self._position = 0

    def seek(self, index: int) -> None:
        self._position = index

    def close(self) -> None:
        self._files = []


class VideoSource:
    """A video file, a network stream or a webcam, through OpenCV (FFmpeg / V4L2 backends).

    ``sample_fps`` (files only): > 0 samples the file on its own timeline at that rate when the file reports its
    frame rate; 0 reads consecutive frames."""

    def __init__(self, uri: str, *, live: bool, open_timeout_s: float = 20.0, read_timeout_s: float = 5.0,
                 sample_fps: float = 0.0):
        self.uri = uri
        self.live = live
        self.name = f"{'stream' if live else 'video'} {uri}"
        self.sample_fps = 0.0 if live else sample_fps
        self._open_timeout_ms = int(open_timeout_s * 1000)
        self._read_timeout_ms = int(read_timeout_s * 1000)
        self._capture: cv2.VideoCapture | None = None
        self._position = 0  # file: the next capture index, to resume after a reopen or a restart
        self._next_frame = 0  # file: the frame the decoder gives next
        self._step = 0.0  # file frames per capture on the native timeline; 0 = one frame per capture
        self._last: np.ndarray | None = None  # file: the image of frame _next_frame - 1

    def open(self) -> None:
        target: str | int = int(self.uri) if self.uri.isdigit() else self.uri
        params = []
        if hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):  # backends that honour it give up on their own
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self._open_timeout_ms,
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, self._read_timeout_ms]
        capture = cv2.VideoCapture(target, cv2.CAP_ANY, params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"OpenCV cannot open {self.name}; check the path/URL, codec support and permissions")
        self._capture = capture
        self._next_frame = 0
        self._last = None
        if not self.live and self.sample_fps:
            native = capture.get(cv2.CAP_PROP_FPS)
            if 0 < native <= 10_000:
                self._step = native / self.sample_fps
            elif not self._step:
                log.warning("%s reports no frame rate (%r); reading consecutive frames, one per capture",
                            self.name, native)

    def frame_of(self, index: int) -> int:
        """The file frame that capture ``index`` takes: the one shown at ``index / sample_fps`` s (native timeline),
        or frame ``index`` (sequential)."""
        return int(index * self._step + 1e-6) if self._step else index

    def read(self) -> np.ndarray | None:
        assert self._capture is not None, "open() first"
        if not self.live:
            frame = self.frame_of(self._position)
            if frame == self._next_frame - 1 and self._last is not None:  # fps above the file's: taken again
                self._position += 1
                return self._last
            if not self._skip_to(frame):
                return None
        ok, image = self._capture.read()
        if not ok or image is None:
            if self.live:
                raise SourceError(f"{self.name} delivered no frame; the stream is down or the camera unplugged")
            return None
        self._next_frame += 1
        self._position += 1
        rgb = to_rgb(image)
        self._last = None if self.live else rgb
        return rgb

    def _skip_to(self, frame: int) -> bool:
        """Position the decoder at ``frame``: grab() the frames in between, or seek for a long or backward skip.
        False at the end of the file."""
        gap = frame - self._next_frame
        if gap < 0 or gap > SEEK_AFTER_FRAMES:
            if self._capture.set(cv2.CAP_PROP_POS_FRAMES, frame):
                self._next_frame = frame
                return True
            if gap < 0:  # capture reopens the file, which starts again at frame 0
                raise SourceError(f"{self.name} cannot seek back to frame {frame}")
        for _ in range(gap):
            if not self._capture.grab():
                return False
            self._next_frame += 1
        return True

    def rewind(self) -> None:
        self._position = 0

    def seek(self, index: int) -> None:
        self._position = index

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def synthetic_camera_index(camera: str) -> int:
    """C1..Ck -> 0..k-1: the camera names of the synthetic scene and of the demo."""
    m = _SYNTHETIC_CAMERA.match(camera)
    if not m or int(m.group(1)) < 1:
        raise SourceError(f"camera {camera!r} has no view in the synthetic scene (its cameras are C1, C2, ...); "
                          "name the camera C<n> or give --source")
    return int(m.group(1)) - 1


def open_source(config: SourceConfig, camera: str) -> Source:
    """The source named by ``config.uri`` (not opened yet). Raises SourceError for a path that does not exist."""
    uri = config.uri.strip()
    if not uri:
        s = config.synthetic
        # The scene's own clock (SceneConfig.fps) is kept: frame i is render(i) whatever --fps is, so a demo can
        # render the same reference views.
        return SyntheticSource(SceneConfig(seed=s.seed, cameras=s.cameras, height=s.height, width=s.width),
                               synthetic_camera_index(camera))
    if uri.isdigit() or "://" in uri:
        return VideoSource(uri, live=True, open_timeout_s=config.open_timeout_s, read_timeout_s=config.read_timeout_s)
    path = Path(uri)
    if path.is_dir():
        return ImageFolderSource(path)
    if path.is_file():
        return VideoSource(uri, live=False, open_timeout_s=config.open_timeout_s, read_timeout_s=config.read_timeout_s,
                           sample_fps=config.fps if config.file_timeline == "native" else 0.0)
    raise SourceError(f"source {uri!r} is neither a file, a folder, a webcam index nor a URL; check --source "
                      "(source.uri)")
