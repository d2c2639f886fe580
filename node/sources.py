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
source. A live source never ends: a failed read there means the source is dead, and capture reopens it. Finite
sources remember their position, so a reopen after an error goes on where it stopped.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from mvic.node.config import SourceConfig
from mvic.shared.scene import Scene, SceneConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_SYNTHETIC_CAMERA = re.compile(r"^C(\d+)$")


class SourceError(RuntimeError):
    """A source that cannot be opened or read; capture logs it and reopens with backoff."""


class Source(Protocol):
    name: str  # for logs
    live: bool  # True: frames are timestamped at grab by the wall clock, a failed read means the source died

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def rewind(self) -> None: ...

    def close(self) -> None: ...


def to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR / grey / BGRA image -> RGB uint8 (H, W, 3)."""
    if image.dtype != np.uint8:
        raise SourceError(f"source gave {image.dtype} pixels; MVIC codes 8-bit images")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class SyntheticSource:
    """This camera's view of the embedded synthetic scene; frame i shows the scene at time i / scene fps."""

    live = False

    def __init__(self, config: SceneConfig, camera_index: int):
        if not 0 <= camera_index < config.cameras:
            raise SourceError(f"camera index {camera_index} is outside the synthetic scene's {config.cameras} cameras")
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
            raise SourceError(f"image folder {self.folder} does not exist")
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"image folder {self.folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")

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

    def close(self) -> None:
        self._files = []


class VideoSource:
    """A video file, a network stream or a webcam, through OpenCV (FFmpeg / V4L2 backends)."""

    def __init__(self, uri: str, *, live: bool, open_timeout_s: float = 20.0, read_timeout_s: float = 5.0):
        self.uri = uri
        self.live = live
        self.name = f"{'stream' if live else 'video'} {uri}"
        self._open_timeout_ms = int(open_timeout_s * 1000)
        self._read_timeout_ms = int(read_timeout_s * 1000)
        self._capture: cv2.VideoCapture | None = None
        self._position = 0  # frames read from a file, to resume after a reopen

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
        if not self.live and self._position:
            capture.set(cv2.CAP_PROP_POS_FRAMES, self._position)
        self._capture = capture

    def read(self) -> np.ndarray | None:
        assert self._capture is not None, "open() first"
        ok, image = self._capture.read()
        if not ok or image is None:
            if self.live:
                raise SourceError(f"{self.name} delivered no frame; the stream is down or the camera unplugged")
            return None
        self._position += 1
        return to_rgb(image)

    def rewind(self) -> None:
        self._position = 0

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
        return VideoSource(uri, live=False, open_timeout_s=config.open_timeout_s, read_timeout_s=config.read_timeout_s)
    raise SourceError(f"source {uri!r} is neither a file, a folder, a webcam index nor a URL")
