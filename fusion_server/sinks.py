"""Where reconstructions go: joint decode -> **sink** -> ack.

Hop before: the decode stage returns a ``DecodeResult`` (one reconstructed image per decoded view of a view set).
Hop after: once ``FrameSinks.write`` returns, the frames are durable and the core records them in the ack book
(``acks.AckBook``), which journals and sends the acks; the live page (``live.LiveView``) shows the newest ones. When
``write`` raises OSError nothing of the view set is acknowledged: its frames are released and resent by the nodes.

* PNG: ``out/<camera>/<sequence, 10 digits>.png`` (or ``<capture_ns>.png``), written atomically and fsynced, so a
  file is whole or absent; a frame decoded again (after a crash or a failed write) replaces its file with identical
  content.
* Video: one ``out/<camera>.mp4`` per camera (OpenCV VideoWriter, mp4v), frames appended in decode order, which is
  capture order; a frame whose size differs from the first is resized. A video file is complete only after
  ``close`` (the server's shutdown), so with video alone an ack means "handed to the encoder", not "on disk"; a frame
  written again after a failed write can appear twice in the video.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from mvic.fusion_server.records import DecodedFrame
from mvic.shared.fileio import safe_name, write_atomic

log = logging.getLogger(__name__)


class FrameSinks:
    """PNG frames and/or videos per camera under one output folder. Used from one thread at a time."""

    def __init__(self, out_dir: str | Path, *, png: bool = True, png_name: str = "sequence", video: bool = False,
                 video_fps: float = 10.0):
        self.out_dir = Path(out_dir)
        self.png, self.png_name, self.video, self.video_fps = png, png_name, video, video_fps
        self._writers: dict[str, tuple[cv2.VideoWriter, tuple[int, int]]] = {}
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def png_path(self, camera_id: str, sequence: int, capture_ns: int) -> Path:
        name = f"{sequence:010d}" if self.png_name == "sequence" else f"{capture_ns}"
        return self.out_dir / safe_name(camera_id) / f"{name}.png"

    def write(self, frames: tuple[DecodedFrame, ...] | list[DecodedFrame]) -> None:
        """Store every frame; raises OSError when one cannot be written (nothing is acknowledged then)."""
        for frame in frames:
            bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
            if self.png:
                ok, data = cv2.imencode(".png", bgr)
                if not ok:
                    raise OSError(f"PNG encoding failed for {frame.source.camera_id}#{frame.source.sequence}")
                src = frame.source
                write_atomic(self.png_path(src.camera_id, src.sequence, src.capture_ns), data.tobytes(), durable=True)
            if self.video:
                self._append_video(frame.source.camera_id, bgr)

    def close(self) -> None:
        for camera, (writer, _) in self._writers.items():
            writer.release()
            log.info("closed video of camera %s", camera)
        self._writers.clear()

    def _append_video(self, camera_id: str, bgr: np.ndarray) -> None:
        if camera_id not in self._writers:
            h, w = bgr.shape[:2]
            path = self.out_dir / f"{safe_name(camera_id)}.mp4"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.video_fps, (w, h))
            if not writer.isOpened():
                raise OSError(f"OpenCV cannot open a video writer for {path} (mp4v); disable sinks.video")
            self._writers[camera_id] = (writer, (w, h))
        writer, size = self._writers[camera_id]
        if (bgr.shape[1], bgr.shape[0]) != size:
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        writer.write(bgr)
