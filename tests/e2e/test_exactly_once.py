"""Three nodes, N frames each, one server: every frame is decoded and written exactly once."""

from __future__ import annotations

import time

from tests.e2e.harness import CAMERAS, assert_delivered_once

FRAMES = 6


def test_every_frame_decoded_exactly_once(cluster):
    cluster.start_server()
    start_at = time.time_ns() + 4_000_000_000  # the nodes start meanwhile; frames due earlier are taken at once
    for cam in CAMERAS:
        cluster.start_node(cam, start_at_ns=start_at, frames=FRAMES)
    stats = assert_delivered_once(cluster, CAMERAS, start_at, FRAMES)
    assert stats["mvic_server_frames_written_total"] == len(CAMERAS) * FRAMES
    assert stats.get("mvic_server_duplicates_dropped_total", 0.0) == 0
    assert stats.get("mvic_server_packets_rejected_total", 0.0) == 0
    assert stats["mvic_server_packets_received_total"] == len(CAMERAS) * FRAMES
    assert cluster.server.alive
