"""Hostile sessions against a real server on loopback (bounded and seeded; ``benchmarks/fuzz_server.py`` runs the
long campaign): every session is answered by name within its deadline, the log stays free of tracebacks, and a
well-behaved camera is served afterwards."""

from __future__ import annotations

import logging
import time

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings

from mvic.shared.bitstream import pack
from mvic.shared.rpc import channel_options
from tests.conftest import random_image
from tests.fusion_server.harness import ServerThread, server_config
from tests.strategies import hostile_packets
from tests.wirefuzz import hello_bytes, hostile_sessions, packet_bytes, run_session

DEADLINE_S = 20.0


def test_hostile_sessions_are_answered_by_name_and_the_server_goes_on(tmp_path, weights, encoder, caplog):
    rng = np.random.default_rng(3)
    views = [encoder.compress_view(random_image(rng, h, w), 1, camera_id="F1", sequence=i + 1)
             for i, (h, w) in enumerate([(64, 96), (64, 64)])]
    config = server_config(tmp_path / "out", weights, max_packet_bytes=1 << 20)
    srv = ServerThread(config).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}", options=channel_options())
    outcomes: dict[str, int] = {}
    try:
        packets = hostile_packets(views, max_pixels=128 * 128, max_stream=1 << 14)

        @settings(max_examples=120, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(messages=hostile_sessions(views, packets, encoder.spec.model_id, encoder.weights_hash))
        def case(messages):
            result = run_session(channel, messages, DEADLINE_S)
            assert result.named, (result, [m[:60] for m, _ in messages])
            outcomes[result.label()] = outcomes.get(result.label(), 0) + 1

        with caplog.at_level(logging.INFO):
            case()
        assert not [r for r in caplog.records if r.exc_info], "a hostile session produced a traceback"
        assert {"INVALID_ARGUMENT", "open, answered"} <= set(outcomes), outcomes
        now = time.time_ns()
        sane = [(hello_bytes(b"SANE1", b"", encoder.spec.model_id, encoder.weights_hash), None)]
        sane += [(packet_bytes(i + 1, now + i * 10**8, pack(encoder.compress_view(
            random_image(rng, 64, 64), 1, camera_id="SANE1", sequence=i + 1, capture_ns=now + i * 10**8))), i + 1)
            for i in range(2)]
        final = run_session(channel, sane, 60.0)
        assert final.welcomed and final.unanswered == 0 and final.acks >= 1 and not final.packet_errors
    finally:
        channel.close()
        srv.stop()
