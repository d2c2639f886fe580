"""The generated protocol stubs match proto/mvic/v1/mvic.proto and import from the mvic.shared.rpc package."""

from __future__ import annotations

import pytest

from mvic.shared import rpc
from mvic.shared.rpc import generate


def test_stubs_are_up_to_date():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) regenerates the stubs")
    reasons = generate.stale_reasons()
    assert not reasons, f"{reasons}: run python -m mvic.shared.rpc.generate"


def test_stubs_import_from_the_package():
    from mvic.shared.rpc import mvic_pb2, mvic_pb2_grpc

    assert mvic_pb2.DESCRIPTOR.package == "mvic.v1"
    assert mvic_pb2.DESCRIPTOR.services_by_name["Fusion"].full_name == rpc.SERVICE_NAME
    assert mvic_pb2_grpc.FusionStub and mvic_pb2_grpc.FusionServicer


def test_message_limits_leave_room_for_framing():
    options = dict(rpc.server_options(1000))
    assert options["grpc.max_receive_message_length"] == 1000 + rpc.MESSAGE_OVERHEAD_BYTES
    assert dict(rpc.channel_options())["grpc.keepalive_time_ms"] >= options["grpc.http2.min_ping_interval_without_data_ms"]
