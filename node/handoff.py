"""The bounded hand-off between capture and encode, with the slow-encoder policy. Second hop of the data path.

Hop before: ``mvic.node.capture.Capture`` puts each ``Frame``. Hop after: ``mvic.node.encoder.EncoderWorker`` gets
them. Two explicit policies, both counted:

    latest   room for one frame; a new frame replaces the one the encoder has not taken yet
             (``mvic_node_frames_dropped_total{reason="latest_policy"}``). Latency stays one frame; the encoder
             always codes the newest image. The default: a live installation wants now, not a growing backlog.
    every    a FIFO of ``queue_frames``; when it is full, capture waits (``mvic_node_capture_blocked_seconds_total``)
             and a live source's own buffer absorbs or loses frames. Every frame a file/folder/scene gives is coded.

A slow link is not handled here: packets wait in the on-disk spool (``mvic.node.spool``), which has its own policy.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from mvic.node.metrics import NodeMetrics


@dataclass(frozen=True)
class Frame:
    """One captured image of this camera."""

    index: int  # position in the capture schedule, from 0 (frame i is due at start_at + i / fps)
    capture_ns: int  # capture time on the camera clock, ns since the Unix epoch
    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8 RGB


class FrameHandoff:
    """Bounded queue of Frames with the 'latest' or 'every' policy; ``close()`` marks the end of the input."""

    def __init__(self, policy: str, queue_frames: int, metrics: NodeMetrics):
        if policy not in ("latest", "every"):
            raise ValueError(f"policy must be 'latest' or 'every', got {policy!r}")
        self.policy = policy
        self.capacity = 1 if policy == "latest" else queue_frames
        self._metrics = metrics
        self._frames: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame: Frame, stop: threading.Event) -> bool:
        """Queue a frame. 'latest' never waits; 'every' waits for room until ``stop`` is set (then the frame is
        dropped with reason "shutdown" and False is returned)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("put() after close()")
            if self.policy == "latest":
                while len(self._frames) >= self.capacity:
                    self._frames.popleft()
                    self._metrics.dropped("latest_policy")
            else:
                started = None
                while len(self._frames) >= self.capacity:
                    if stop.is_set():
                        self._metrics.dropped("shutdown")
                        return False
                    started = started or time.monotonic()
                    self._cond.wait(0.1)
                if started is not None:
                    self._metrics.capture_blocked_seconds.inc(time.monotonic() - started)
            self._frames.append(frame)
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Frame | None:
        """The oldest queued frame, or None after ``timeout`` seconds (or at once when closed and empty)."""
        with self._cond:
            deadline = time.monotonic() + timeout
            while not self._frames:
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame = self._frames.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        """No more frames will come (the source ended or capture stopped); queued ones can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        """Closed and drained: the encoder has taken every frame there will be."""
        with self._cond:
            return self._closed and not self._frames

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)
