"""Newest reconstruction and running stats per camera, for the live page: sink -> **live view** -> HTTP.

Hop before: the sink stage has written a view set (``core.FusionCore``) and publishes its frames here; the core also
reports connections, rejections, duplicates and acks of the cameras that hold a slot (``acks.AckBook``).
Hop after: ``webpage.LivePage`` serves ``snapshot()`` as JSON and ``jpeg(camera)`` as images.

Thread-safe (the sink stage runs on worker threads, the live page in the event loop). Memory is bounded: one JPEG and a
short window of timings per camera, for at most ``max_cameras`` cameras.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import NamedTuple

import cv2

from mvic.fusion_server.records import DecodedFrame

WINDOW_S = 5.0  # fps and means are over this many recent seconds
MAX_PREVIEW_WIDTH = 640


@dataclass(frozen=True)
class CameraStats:
    camera: str
    group: str
    connected: bool
    frames_decoded: int
    frames_rejected: int
    duplicates: int
    fps: float  # written frames per second, recent window
    bpp: float  # bits per pixel, recent window
    latency_s: float  # received -> written, server clock, recent mean
    capture_latency_s: float  # captured (camera clock) -> written (server clock), recent mean
    acked_sequence: int
    width: int
    height: int
    updated_unix_s: float


class _Sample(NamedTuple):
    """One written frame, for the recent-window means."""

    t: float  # monotonic time it was published
    bpp: float  # bits per pixel
    latency_s: float  # received -> written, server clock
    capture_latency_s: float  # captured (camera clock) -> written (server clock)


class _Camera:
    def __init__(self, camera: str, group: str):
        self.camera, self.group = camera, group
        self.connected = False
        self.decoded = self.rejected = self.duplicates = 0
        self.acked = 0
        self.size = (0, 0)
        self.jpeg: bytes | None = None
        self.updated = 0.0
        self.recent: deque[_Sample] = deque(maxlen=512)


class LiveView:
    def __init__(self, max_cameras: int = 64, jpeg_quality: int = 80):
        self._lock = threading.Lock()
        self._cameras: dict[str, _Camera] = {}
        self._max = max_cameras
        self._quality = jpeg_quality
        self.started_unix_s = time.time()

    def set_connected(self, camera: str, group: str, connected: bool) -> None:
        """Shows the camera (the core calls it for cameras that hold a slot) or updates it."""
        with self._lock:
            if cam := self._get(camera, group, create=True):
                cam.connected = connected

    def record_frames(self, frames: tuple[DecodedFrame, ...], written_ns: int) -> None:
        """Publish written frames: previews are encoded here (on the sink's thread), outside the lock."""
        previews = {f.source.camera_id: self._preview(f) for f in frames}
        now = time.monotonic()
        with self._lock:
            for frame in frames:
                src = frame.source
                cam = self._get(src.camera_id, src.group_id, create=True)
                if cam is None:
                    continue
                h, w = frame.image.shape[:2]
                cam.decoded += 1
                cam.size = (w, h)
                cam.jpeg = previews[src.camera_id]
                cam.updated = time.time()
                cam.recent.append(_Sample(now, 8.0 * src.bitstream_bytes / (h * w),
                                          (written_ns - src.received_ns) / 1e9, (written_ns - src.capture_ns) / 1e9))

    def record_rejected(self, camera: str, group: str) -> None:
        with self._lock:
            if cam := self._get(camera, group):
                cam.rejected += 1

    def record_duplicate(self, camera: str, group: str) -> None:
        with self._lock:
            if cam := self._get(camera, group):
                cam.duplicates += 1

    def record_ack(self, camera: str, group: str, acked: int) -> None:
        with self._lock:
            if cam := self._get(camera, group):
                cam.acked = acked

    def jpeg(self, camera: str) -> bytes | None:
        with self._lock:
            cam = self._cameras.get(camera)
            return cam.jpeg if cam else None

    def snapshot(self) -> dict:
        """JSON-ready stats: {"uptime_s", "cameras": [CameraStats as dict, sorted by camera]}."""
        now = time.monotonic()
        with self._lock:
            stats = [self._stats(cam, now) for cam in self._cameras.values()]
        return {"uptime_s": round(time.time() - self.started_unix_s, 3),
                "cameras": [asdict(s) for s in sorted(stats, key=lambda s: s.camera)]}

    def _stats(self, cam: _Camera, now: float) -> CameraStats:
        recent = [r for r in cam.recent if now - r.t <= WINDOW_S]
        span = min(WINDOW_S, max(now - recent[0].t, 1e-3)) if len(recent) > 1 else 0.0
        recent = recent or list(cam.recent)[-1:]  # a camera gone quiet shows its last frame's bpp and latency

        def mean(values: list[float]) -> float:
            return round(sum(values) / len(values), 6) if values else 0.0

        return CameraStats(cam.camera, cam.group, cam.connected, cam.decoded, cam.rejected, cam.duplicates,
                           round((len(recent) - 1) / span, 3) if span else 0.0, mean([r.bpp for r in recent]),
                           mean([r.latency_s for r in recent]), mean([r.capture_latency_s for r in recent]),
                           cam.acked, cam.size[0], cam.size[1], cam.updated)

    def _get(self, camera: str, group: str, create: bool = False) -> _Camera | None:
        """The camera's entry; a new one only with ``create`` (a camera that holds a slot), at most max_cameras."""
        cam = self._cameras.get(camera)
        if cam is None and create and len(self._cameras) < self._max:
            cam = self._cameras[camera] = _Camera(camera, group)
        return cam

    def _preview(self, frame: DecodedFrame) -> bytes:
        bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
        h, w = bgr.shape[:2]
        if w > MAX_PREVIEW_WIDTH:
            bgr = cv2.resize(bgr, (MAX_PREVIEW_WIDTH, max(1, h * MAX_PREVIEW_WIDTH // w)), interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        return data.tobytes() if ok else b""
