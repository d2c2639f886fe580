"""Three nodes, N frames each, one server: every frame is decoded and written exactly once."""

from __future__ import annotations

import time

from tests.e2e.harness import CAMERAS, capture_times, png_names, spooled

FRAMES = 6


def test_every_frame_decoded_exactly_once(cluster):
    cluster.start_server()
    start_at = time.time_ns() + 4_000_000_000  # the nodes start meanwhile; frames due earlier are taken at once
    for cam in CAMERAS:
        cluster.start_node(cam, start_at_ns=start_at, frames=FRAMES)
    codes = cluster.wait_nodes_done(CAMERAS)
    assert codes == {c: 0 for c in CAMERAS}, cluster.logs()

    expected = sorted(capture_times(start_at, FRAMES))
    for cam in CAMERAS:
        assert png_names(cluster.out, cam) == expected, f"camera {cam}\n{cluster.logs()}"
        assert spooled(cluster.spool, cam) == [], f"spool of {cam} not empty"
    stats = cluster.server_stats()
    assert stats["mvic_server_frames_written_total"] == len(CAMERAS) * FRAMES
    assert stats.get("mvic_server_duplicates_dropped_total", 0.0) == 0
    assert stats.get("mvic_server_packets_rejected_total", 0.0) == 0
    assert stats["mvic_server_packets_received_total"] == len(CAMERAS) * FRAMES
    assert cluster.server.alive
