"""Capture: schedule timestamps, frame limit, and the watchdog that reopens hung or dead sources."""

from __future__ import annotations

import threading

import pytest

from mvic.node.capture import Capture, CaptureSchedule, capture_schedule, resume_index
from mvic.node.config import SourceConfig
from mvic.node.handoff import FrameHandoff
from mvic.node.metrics import NodeMetrics
from mvic.node.sources import open_source
from tests.node.fakes import ScriptedSource, frame_number, write_indexed_video

FAST = dict(read_timeout_s=0.2, open_timeout_s=0.2, reopen_backoff_s=0.01, reopen_backoff_max_s=0.05)


def run_capture(source, config: SourceConfig, policy="every", start_at=0, clock=None, first_index=0):
    metrics = NodeMetrics("C1")
    handoff = FrameHandoff(policy, 1000, metrics)
    stop = threading.Event()
    kwargs = {"clock": clock} if clock else {}
    capture = Capture(source, handoff, config, metrics, stop, start_at_ns=start_at, first_index=first_index, **kwargs)
    thread = threading.Thread(target=capture.run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "capture stalled"
    frames = []
    while (f := handoff.get(0)) is not None:
        frames.append(f)
    return capture, frames, metrics


def test_schedule_stamps_frames_start_at_plus_i_over_fps():
    start = 1_700_000_000_000_000_000
    now = [start + 10**12]  # far past the schedule: no sleeping
    source = ScriptedSource(["ok"] * 10)
    capture, frames, metrics = run_capture(source, SourceConfig(fps=4.0, frames=5, **FAST), start_at=start,
                                           clock=lambda: now[0])
    assert [f.capture_ns for f in frames] == [start + i * 250_000_000 for i in range(5)]
    assert [f.index for f in frames] == list(range(5))
    assert capture.finished_naturally and metrics.value("mvic_node_frames_captured_total") == 5


def test_finite_source_end_finishes_capture():
    capture, frames, _ = run_capture(ScriptedSource(["ok", "ok", "end"]), SourceConfig(fps=0, **FAST))
    assert len(frames) == 2 and capture.finished_naturally


def test_hung_read_is_detected_and_the_source_reopened():
    source = ScriptedSource(["ok", "hang", "ok", "ok", "end"], hang_s=1.0)
    capture, frames, metrics = run_capture(source, SourceConfig(fps=0, **FAST))
    assert len(frames) == 3  # the hung read gave nothing; capture went on after a reopen
    assert metrics.value("mvic_node_source_failures_total", reason="hung") == 1
    assert metrics.value("mvic_node_source_reopens_total") == 1
    assert source.opens == 2


def test_dead_live_source_is_reopened_with_backoff(caplog):
    source = ScriptedSource(["ok", "error", "error", "ok", "end", "ok"], live=True)
    with caplog.at_level("WARNING"):
        capture, frames, metrics = run_capture(source, SourceConfig(fps=0, frames=3, **FAST))
    assert len(frames) == 3
    assert metrics.value("mvic_node_source_failures_total", reason="error") == 2
    assert metrics.value("mvic_node_source_failures_total", reason="eof") == 1  # a live source never 'ends'
    assert metrics.value("mvic_node_source_reopens_total") == 3  # one reopen after each failure
    assert "failure 2" in caplog.text and "reopening" in caplog.text


def test_source_that_cannot_open_keeps_being_retried():
    class Flaky(ScriptedSource):
        def open(self):
            super().open()
            if self.opens < 3:
                raise OSError("camera not ready")

    source = Flaky(["ok", "ok", "end"])
    capture, frames, metrics = run_capture(source, SourceConfig(fps=0, **FAST))
    assert len(frames) == 2 and source.opens == 3
    assert metrics.value("mvic_node_source_failures_total", reason="open_failed") == 2


def test_stop_interrupts_a_waiting_schedule():
    metrics = NodeMetrics("C1")
    handoff = FrameHandoff("latest", 1, metrics)
    stop = threading.Event()
    capture = Capture(ScriptedSource(["ok"] * 100), handoff, SourceConfig(fps=0.01, **FAST), metrics, stop,
                      start_at_ns=0, clock=lambda: 0)
    thread = threading.Thread(target=capture.run)
    thread.start()
    threading.Timer(0.2, stop.set).start()
    thread.join(3)
    assert not thread.is_alive() and not capture.finished_naturally


@pytest.mark.parametrize("policy", ["latest", "every"])
def test_live_source_rate_limit(policy):
    t = [0]

    def clock():
        t[0] += 50_000_000  # a frame every 50 ms
        return t[0]

    source = ScriptedSource(["ok"] * 20 + ["error"], live=True)
    capture, frames, metrics = run_capture(source, SourceConfig(fps=10.0, frames=5, **FAST), policy=policy,
                                           clock=clock)
    assert metrics.value("mvic_node_frames_captured_total") == 5
    assert metrics.dropped_count("rate_limit") >= 4  # about every other frame of a 20 fps source at --fps 10


def test_stop_does_not_wait_for_a_hung_read():
    metrics = NodeMetrics("C1")
    handoff = FrameHandoff("latest", 1, metrics)
    stop = threading.Event()
    source = ScriptedSource(["hang"], hang_s=3.0)
    config = SourceConfig(fps=0, read_timeout_s=10.0, open_timeout_s=1.0)
    capture = Capture(source, handoff, config, metrics, stop, start_at_ns=0)
    thread = threading.Thread(target=capture.run)
    thread.start()
    threading.Timer(0.3, stop.set).start()
    thread.join(2)
    assert not thread.is_alive()  # stopped within 2 s although the read hangs for 3 s and the timeout is 10 s
    assert handoff.finished


def test_frames_larger_than_max_side_are_downscaled_before_the_handoff():
    source = ScriptedSource(["ok", "ok", "end"], shape=(40, 100, 3))
    _, frames, _ = run_capture(source, SourceConfig(fps=0, max_side=50, **FAST))
    assert [f.image.shape for f in frames] == [(20, 50, 3)] * 2


def test_resumed_schedule_continues_index_timestamps_and_video_frames(tmp_path):
    path = tmp_path / "cam.avi"
    write_indexed_video(path, 96, 30.0, "MJPG")  # frame k shows k
    start = 1_700_000_000_000_000_000
    config = SourceConfig(uri=str(path), fps=2.0, start_at_ns=start, frames=5, **FAST)
    source = open_source(config, "C1")
    last_spooled = start + 2 * 500_000_000  # the previous run spooled frames 0..2
    first = resume_index(last_spooled, start, config.fps)
    assert first == 3
    capture, frames, _ = run_capture(source, config, start_at=start, first_index=first, clock=lambda: start + 10**12)
    assert [f.index for f in frames] == [3, 4]  # --frames 5 ends the schedule at frame 5, not 5 frames later
    assert [f.capture_ns for f in frames] == [start + 1_500_000_000, start + 2_000_000_000]
    assert [frame_number(f.image) for f in frames] == [45, 60]  # the file's frames at 1.5 s and 2 s
    assert capture.captured == 2 and capture.finished_naturally


def test_capture_schedule_only_for_explicit_schedules_of_finite_sources():
    config = SourceConfig(uri="cam1.mp4", fps=2.0, start_at_ns=5)
    schedule = capture_schedule(config, live=False)
    assert schedule == CaptureSchedule("cam1.mp4", 5, 2.0, "native")
    assert schedule.to_json() == {"uri": "cam1.mp4", "start_at_ns": 5, "fps": 2.0, "file_timeline": "native"}
    assert CaptureSchedule.from_json(schedule.to_json()) == schedule  # as state.json keeps it
    assert CaptureSchedule.from_json(None) is None and CaptureSchedule.from_json({"uri": "x"}) is None
    assert capture_schedule(config, live=True) is None  # a live source has nothing to resume
    assert capture_schedule(SourceConfig(fps=2.0), live=False) is None  # start_at = node start: a new schedule
    assert capture_schedule(SourceConfig(fps=0, start_at_ns=5), live=False) is None  # no schedule at fps 0
    for fps in (2.0, 3.0, 29.97, 7.0):  # the inverse of the stamps start_at + round(i * 1e9 / fps)
        assert [resume_index(5 + round(i * 1e9 / fps), 5, fps) for i in range(1000)] == list(range(1, 1001))


def test_live_sources_ignore_a_resume_index():
    source = ScriptedSource(["ok"] * 3 + ["error"], live=True)
    _, frames, _ = run_capture(source, SourceConfig(fps=0, frames=2, **FAST), first_index=7)
    assert [f.index for f in frames] == [0, 1]
