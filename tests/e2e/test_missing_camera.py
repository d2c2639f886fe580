"""A missing camera: the server expects C1..C3, C3 is connected but sends nothing (its capture stalled); after
``grouping.max_wait_ms`` every group is decoded with the two views present, and all of C1's and C2's frames are
written. (A camera that never connects is not waited for at all: the grouper waits for connected cameras only;
test_bad_input runs C1 alone with C1..C3 configured.)"""

from __future__ import annotations

import time

import pytest

from mvic.shared.bitstream import FORMAT_VERSION
from mvic.shared.codec.registry import load_model
from mvic.shared.rpc import CAMERA_METADATA_KEY, mvic_pb2 as pb
from tests.e2e.harness import MODEL, RawCamera, capture_times, png_names, spooled

FRAMES = 4
MAX_WAIT_MS = 1500.0


@pytest.mark.slow  # 20-35 s here: server, then the silent camera, then the nodes, one after the other
def test_groups_decode_without_the_missing_view_after_max_wait(cluster, tiny_weights):
    server = cluster.start_server(max_wait_ms=MAX_WAIT_MS)
    codec = load_model(tiny_weights[MODEL])
    cluster.wait_server_ready()
    hello = pb.Hello(camera_id="C3", model_id=codec.spec.model_id, weights_hash=codec.weights_hash,
                     format_version=FORMAT_VERSION, node_version="e2e-silent", session_ns=time.time_ns())
    silent = RawCamera(cluster.target, hello, metadata=((CAMERA_METADATA_KEY, "C3"),))
    try:
        assert silent.next().WhichOneof("kind") == "welcome"
        start_at = time.time_ns() + 3_000_000_000
        for cam in ("C1", "C2"):
            cluster.start_node(cam, start_at_ns=start_at, frames=FRAMES)
        assert cluster.wait_nodes_done(["C1", "C2"]) == {"C1": 0, "C2": 0}, cluster.logs()
        assert silent.received.empty(), "the silent camera's stream should stay open and quiet"
    finally:
        silent.close()

    expected = sorted(capture_times(start_at, FRAMES))
    for cam in ("C1", "C2"):
        assert png_names(cluster.out, cam) == expected, f"camera {cam}\n{cluster.logs()}"
        assert spooled(cluster.spool, cam) == []
    assert png_names(cluster.out, "C3") == []
    stats = cluster.server_stats()
    assert stats["mvic_server_frames_written_total"] == 2 * FRAMES
    assert stats['mvic_server_groups_decoded_total{outcome="partial"}'] == FRAMES, cluster.logs()
    assert stats.get('mvic_server_groups_decoded_total{outcome="complete"}', 0.0) == 0
    assert stats["mvic_server_group_views_sum"] == 2 * FRAMES  # two views in each group
    # every group waited the full max_wait for C3 before it was decoded, no longer than needed
    assert stats["mvic_server_group_wait_seconds_count"] == FRAMES
    assert stats['mvic_server_group_wait_seconds_bucket{le="1.0"}'] == 0
    assert stats["mvic_server_group_wait_seconds_sum"] >= FRAMES * MAX_WAIT_MS / 1e3
    assert stats['mvic_server_group_wait_seconds_bucket{le="5.0"}'] == FRAMES
    assert server.alive
