"""Capture: schedule timestamps, frame limit, and the watchdog that reopens hung or dead sources."""

from __future__ import annotations

import threading

import pytest

from mvic.node.capture import Capture
from mvic.node.config import SourceConfig
from mvic.node.handoff import FrameHandoff
from mvic.node.metrics import NodeMetrics
from tests.node.fakes import ScriptedSource

FAST = dict(read_timeout_s=0.2, open_timeout_s=0.2, reopen_backoff_s=0.01, reopen_backoff_max_s=0.05)


def run_capture(source, config: SourceConfig, policy="every", start_at=0, clock=None):
    metrics = NodeMetrics("C1")
    handoff = FrameHandoff(policy, 1000, metrics)
    stop = threading.Event()
    kwargs = {"clock": clock} if clock else {}
    capture = Capture(source, handoff, config, metrics, stop, start_at_ns=start_at, **kwargs)
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
