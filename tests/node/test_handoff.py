"""capture -> encode hand-off: the 'latest' and 'every' policies and their counters."""

from __future__ import annotations

import threading
import time

import numpy as np

from mvic.node.handoff import Frame, FrameHandoff
from mvic.node.metrics import NodeMetrics


def frame(i: int) -> Frame:
    return Frame(i, i * 1000, np.zeros((4, 4, 3), np.uint8))


def test_latest_keeps_only_the_newest_and_counts_drops():
    metrics = NodeMetrics("C1")
    handoff = FrameHandoff("latest", 8, metrics)
    stop = threading.Event()
    for i in range(5):
        assert handoff.put(frame(i), stop)  # never waits
    assert len(handoff) == 1
    assert handoff.get(0.1).index == 4
    assert metrics.dropped_count("latest_policy") == 4
    assert metrics.value("mvic_node_capture_blocked_seconds_total") == 0


def test_every_blocks_capture_and_loses_nothing():
    metrics = NodeMetrics("C1")
    handoff = FrameHandoff("every", 2, metrics)
    stop = threading.Event()
    got: list[int] = []

    def slow_encoder():
        while not handoff.finished:
            f = handoff.get(0.05)
            if f is not None:
                got.append(f.index)
                time.sleep(0.03)

    worker = threading.Thread(target=slow_encoder)
    worker.start()
    for i in range(8):
        assert handoff.put(frame(i), stop)
    handoff.close()
    worker.join(5)
    assert got == list(range(8))
    assert metrics.dropped_count() == 0
    assert metrics.value("mvic_node_capture_blocked_seconds_total") > 0.05


def test_every_gives_up_when_stopping():
    metrics = NodeMetrics("C1")
    handoff = FrameHandoff("every", 1, metrics)
    stop = threading.Event()
    assert handoff.put(frame(0), stop)
    threading.Timer(0.1, stop.set).start()
    assert not handoff.put(frame(1), stop)
    assert metrics.dropped_count("shutdown") == 1
    handoff.close()
    assert handoff.get(0.01).index == 0 and handoff.get(0.01) is None and handoff.finished
