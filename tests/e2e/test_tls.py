"""The real programs over mutual TLS: two cameras with their own certificates; one certificate is renewed while its
node streams. Every frame is still decoded and written exactly once."""

from __future__ import annotations

import time

from tests.e2e.harness import assert_delivered_once, journal
from tests.pki import CA, DOMAIN

FRAMES = 40  # 10 s at 4 fps: C1 still streams when its renewed certificate is noticed (0.2 s checks)
CAMERAS = ("C1", "C2")


def test_mutual_tls_with_a_certificate_renewed_mid_stream_delivers_every_frame_once(cluster, tmp_path):
    ca = CA()
    pki = tmp_path / "pki"
    server_cert, server_key = ca.server().write(pki, "server")
    ca_file = str(ca.write(pki))
    cluster.start_server(cameras=CAMERAS, tls={"cert": str(server_cert), "key": str(server_key),
                                               "client_ca": ca_file, "trust_domain": DOMAIN, "reload_s": 0.2})
    start_at = time.time_ns() + 4_000_000_000
    for cam in CAMERAS:
        cert, key = ca.camera(cam).write(pki, cam)
        cluster.start_node(cam, start_at_ns=start_at, frames=FRAMES,
                           tls={"ca": ca_file, "cert": str(cert), "key": str(key), "reload_s": 0.2})
    cluster.wait_for(lambda: journal(cluster.out).get("C1", 0) >= 3, 120, "C1's first acknowledged frames",
                     watch=[cluster.server, *cluster.nodes.values()])
    renewed = ca.camera("C1")
    renewed.write(pki, "C1")
    stats = assert_delivered_once(cluster, CAMERAS, start_at, FRAMES)
    assert stats["mvic_server_frames_written_total"] == len(CAMERAS) * FRAMES
    c1_log = cluster.nodes["C1"].log.read_text()
    assert "renewed" in c1_log and "reconnecting" in c1_log, c1_log[-3000:]
    assert cluster.server.alive
