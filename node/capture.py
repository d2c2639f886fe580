"""Capture: read the source on schedule under a watchdog and timestamp each frame. First hop after the source.

Hop before: a ``mvic.node.sources.Source``. Hop after: ``mvic.node.handoff.FrameHandoff`` (then the encoder).

Schedule. Frame i of a file, folder or synthetic scene is due at ``start_at + i / fps`` and carries exactly that
capture time, so several nodes started with the same ``--start-at`` agree on timestamps (fps 0: as fast as
possible, stamped at read). A live source (webcam, stream) is stamped with the wall clock at grab; frames it
delivers faster than ``fps`` are dropped (reason "rate_limit"). Images whose long side exceeds ``max_side`` are
downscaled here, before the encoder.

Resume. A finite source on an explicit schedule (``start_at_ns`` given, fps > 0) is identified by its
``CaptureSchedule`` (``capture_schedule``); the spool keeps it with the capture time of the last packet it stored.
A node restarted on the same schedule starts at ``first_index`` = the frame after that one (``resume_index``): the
source is ``seek``-ed there, timestamps go on from it, and ``frames`` still ends the schedule at frame N, not N
frames later.

Watchdog. Every source call runs on a reader thread and is waited for at most ``read_timeout_s``
(``open_timeout_s`` for opening). A call that takes longer is a hung source: it is counted
(``mvic_node_source_failures_total{reason="hung"}``, ``SourceHungError``), logged, its thread abandoned (it closes
the source if the call ever returns), and the source is reopened on a fresh thread after a backoff that doubles up to
``reopen_backoff_max_s``. Errors, failed opens and the end of a live source are handled the same way. The stall
never goes unnoticed: each failure logs a WARNING with the count so far, and the backoff resets after a good read.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from mvic.node.config import SourceConfig
from mvic.node.errors import SourceHungError
from mvic.node.handoff import Frame, FrameHandoff
from mvic.node.metrics import NodeMetrics
from mvic.node.sources import Source, fit_within

log = logging.getLogger(__name__)


class CaptureStopped(Exception):
    """Control flow, not an error: the node stopped while a source call was still running."""


class _Reader:
    """One daemon thread that runs source calls; a caller waits for each with a timeout."""

    def __init__(self, name: str):
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, box, done = job
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed to the caller, which decides
                box.append((False, exc))
            done.set()

    def call(self, fn: Callable[[], Any], timeout: float, stop: threading.Event) -> Any:
        box: list = []
        done = threading.Event()
        self._jobs.put((fn, box, done))
        deadline = time.monotonic() + timeout
        while not done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if stop.is_set():
                raise CaptureStopped()
            if time.monotonic() >= deadline:
                raise SourceHungError(f"call took longer than {timeout:g} s; check the camera or stream (it is "
                                      "reopened), or raise source.read_timeout_s / open_timeout_s")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def abandon(self, cleanup: Callable[[], Any]) -> None:
        """Leave a hung thread: once its call returns it runs ``cleanup`` and exits."""
        self._jobs.put((cleanup, [], threading.Event()))
        self._jobs.put(None)

    def stop(self) -> None:
        self._jobs.put(None)


@dataclass(frozen=True)
class CaptureSchedule:
    """What a restarted node must share with the previous run to resume its capture schedule. The spool keeps it
    in its state.json (``to_json`` / ``from_json``)."""

    uri: str  # source.uri
    start_at_ns: int  # schedule origin, ns since the Unix epoch
    fps: float  # frames per second of the schedule
    file_timeline: str  # native or sequential (video files)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> CaptureSchedule | None:
        """The schedule a state file names, or None when it names none (or one this version cannot read)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(str(data["uri"]), int(data["start_at_ns"]), float(data["fps"]), str(data["file_timeline"]))
        except (KeyError, TypeError, ValueError):
            return None


def capture_schedule(config: SourceConfig, live: bool) -> CaptureSchedule | None:
    """The schedule of this run, or None when the source has none to resume (live, fps 0, or start_at chosen at
    node start)."""
    if live or not config.fps or not config.start_at_ns:
        return None
    return CaptureSchedule(config.uri, config.start_at_ns, config.fps, config.file_timeline)


def resume_index(last_capture_ns: int, start_at_ns: int, fps: float) -> int:
    """The schedule index after the frame stamped ``last_capture_ns`` (stamps are start_at + round(i * 1e9 / fps))."""
    return max(0, round((last_capture_ns - start_at_ns) * fps / 1e9) + 1)


class Capture:
    """Reads ``source`` into ``handoff`` until the source ends, the schedule reaches frame ``config.frames``, or
    ``stop`` is set. ``first_index``: the schedule index to start at (a resumed schedule; finite sources only)."""

    def __init__(self, source: Source, handoff: FrameHandoff, config: SourceConfig, metrics: NodeMetrics,
                 stop: threading.Event, *, start_at_ns: int, clock: Callable[[], int] = time.time_ns,
                 first_index: int = 0):
        self.source = source
        self.handoff = handoff
        self.config = config
        self.metrics = metrics
        self.stop = stop
        self.start_at_ns = start_at_ns
        self.clock = clock
        self.captured = 0  # frames captured by this run
        self.index = 0 if source.live else first_index  # schedule index of the next frame
        self.finished_naturally = False  # the source ended or the frame count was reached (not a stop request)
        self._reader: _Reader | None = None
        self._opened = False
        self._failures = 0  # since start, for the logs
        self._streak = 0  # failures since the last good read
        self._backoff = config.reopen_backoff_s
        self._next_live_ns = 0

    # ----------------------------------------------------------------------------------------- loop
    def run(self) -> None:
        try:
            if self.index:
                self.source.seek(self.index)
            self._loop()
        except CaptureStopped:
            log.info("capture stopped during a source call")
        except Exception:
            log.exception("capture stopped by an unexpected error; the node will stop")
            raise
        finally:
            self._close()
            if self._reader is not None:
                self._reader.stop()
            self.handoff.close()

    def _loop(self) -> None:
        cfg = self.config
        while not self.stop.is_set():
            if cfg.frames and self.index >= cfg.frames:
                log.info("captured %d frames, the schedule reached frame %d (--frames); capture finished",
                         self.captured, cfg.frames)
                self.finished_naturally = True
                return
            if not self._opened and not self._open():
                continue
            due_ns = self._wait_until_due()
            if due_ns is None:
                return
            image = self._read()
            if image is _FAILED:
                continue
            if image is None and self.source.live:
                self._failed("eof", EOFError("a live source ended its stream"))
                continue
            if image is None:  # end of a finite source
                if cfg.loop:
                    log.info("%s ended; starting again (loop)", self.source.name)
                    self._close()
                    self.source.rewind()
                    continue
                log.info("%s ended after %d frames; capture finished", self.source.name, self.captured)
                self.finished_naturally = True
                return
            self._backoff = cfg.reopen_backoff_s
            self._streak = 0
            if self.source.live:
                due_ns = self.clock()
                if cfg.fps and not self._live_tick(due_ns):
                    self.metrics.dropped("rate_limit")
                    continue
            frame = Frame(self.index, due_ns, fit_within(image, cfg.max_side))
            self.index += 1
            self.captured += 1
            self.metrics.frames_captured.inc()
            self.handoff.put(frame, self.stop)

    def _live_tick(self, now_ns: int) -> bool:
        """Rate limit for live sources: True when a frame grabbed now is due. Ticks stay on a grid of 1/fps (a
        quarter period early still counts, for camera jitter) and restart from now after a gap."""
        period = round(1e9 / self.config.fps)
        if now_ns < self._next_live_ns - period // 4:
            return False
        behind = not self._next_live_ns or now_ns - self._next_live_ns >= period
        self._next_live_ns = now_ns + period if behind else self._next_live_ns + period
        return True

    def _wait_until_due(self) -> int | None:
        """Sleep until frame ``index`` is due (finite sources); its capture time, or None when stopped."""
        if self.source.live:
            return 0
        if not self.config.fps:
            return self.clock()
        due = self.start_at_ns + round(self.index * 1e9 / self.config.fps)
        wait_s = (due - self.clock()) / 1e9
        if wait_s > 0 and self.stop.wait(wait_s):
            return None
        return due

    # ------------------------------------------------------------------------------------- watchdog
    def _call(self, fn: Callable[[], Any], timeout: float) -> Any:
        if self._reader is None:
            self._reader = _Reader(f"mvic-capture-reader-{self.metrics.camera}")
        return self._reader.call(fn, timeout, self.stop)

    def _open(self) -> bool:
        try:
            self._call(self.source.open, self.config.open_timeout_s)
        except CaptureStopped:
            raise
        except Exception as exc:
            self._failed("open_failed", exc)
            return False
        if self._streak:
            self.metrics.source_reopens.inc()
            log.info("%s reopened after %d failure(s) in a row", self.source.name, self._streak)
        self._opened = True
        return True

    def _read(self):
        try:
            return self._call(self.source.read, self.config.read_timeout_s)
        except SourceHungError as exc:
            self._failed("hung", exc)
        except CaptureStopped:
            raise
        except Exception as exc:
            self._failed("error", exc)
        return _FAILED

    def _failed(self, reason: str, exc: BaseException) -> None:
        self._failures += 1
        self._streak += 1
        self.metrics.source_failure(reason)
        if reason == "hung":
            # The stuck call still owns the source: leave its thread, which closes the source if it ever returns.
            self._reader.abandon(self.source.close)
            self._reader = None
            self._opened = False
        else:
            self._close()
        log.warning("%s %s (%s: %s); failure %d since start, reopening in %.3g s", self.source.name,
                    {"hung": "hung", "error": "failed", "eof": "ended", "open_failed": "could not be opened"}[reason],
                    type(exc).__name__, exc, self._failures, self._backoff)
        self.stop.wait(self._backoff)
        self._backoff = min(self._backoff * 2, self.config.reopen_backoff_max_s)

    def _close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        try:
            self._call(self.source.close, self.config.read_timeout_s)
        except (SourceHungError, CaptureStopped) as exc:
            # the close stays queued on the reader thread and runs once the stuck call returns
            if isinstance(exc, SourceHungError):
                log.warning("%s did not close within %g s; abandoning it", self.source.name,
                            self.config.read_timeout_s)
            self._reader.abandon(lambda: None)
            self._reader = None
        except Exception as exc:
            log.warning("closing %s failed: %s", self.source.name, exc)


_FAILED = object()  # sentinel: the read failed and was handled
