"""The MVIC wire protocol (``proto/mvic/v1/mvic.proto``): generated stubs plus the constants both ends share.

Hop before: the node's sender (``mvic.node``) wraps each packed view in a ``ViewPacket``.
Hop after: the fusion server's servicer (``mvic.fusion_server``) unwraps it and hands it to the grouper.

``hello.Hello`` is the one typed record of the Hello that both ends build and read (``to_proto`` / ``from_proto``,
``check``). ``mvic_pb2`` / ``mvic_pb2_grpc`` are generated; regenerate them with
``python -m mvic.shared.rpc.generate`` after editing the .proto (a test fails when they are stale). Everything here is
import-light: no torch.
"""

from __future__ import annotations

import json

#: Stream metadata (gRPC request headers) set by the node on Fusion.Stream, so that a router can place the stream
#: without parsing messages. Values are the Hello's camera_id and group_id; they must agree with the Hello.
CAMERA_METADATA_KEY = "mvic-camera"
GROUP_METADATA_KEY = "mvic-group"
#: Trailing metadata of a stream a cluster server refused because another server owns its camera group: that
#: server's address (``mvic.fusion_server.cluster``); the node then re-resolves and reconnects at once.
OWNER_METADATA_KEY = "mvic-owner"

#: Load-balancing policies a node's channel may use: ``ring_hash`` sends every stream of a camera group to the
#: same server of the addresses its target resolves to (hashing the ``mvic-group`` header); ``pick_first`` takes
#: the first address that connects.
LB_POLICIES = ("ring_hash", "pick_first")
#: grpcio takes ``requestHashHeader`` (gRFC A76) only with this environment variable set to true; without it the
#: ring_hash policy fails every call ("hash attribute not present"). ``mvic-node``'s ``main`` sets it.
RING_HASH_HEADER_ENV = "GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY"
#: gRPC core's registered name of the ring_hash policy.
RING_HASH_POLICY_NAME = "ring_hash_experimental"

#: Fully qualified service name, as used by gRPC health checking (grpc.health.v1) and reflection.
SERVICE_NAME = "mvic.v1.Fusion"

DEFAULT_PORT = 50051

#: Largest ViewPacket.bitstream a server takes by default, bytes (servers announce theirs in Welcome).
DEFAULT_MAX_PACKET_BYTES = 8 << 20
#: Room for the protobuf framing around a bitstream (ids, times), bytes.
MESSAGE_OVERHEAD_BYTES = 64 << 10

#: Keepalive: the client pings every KEEPALIVE_TIME_MS when the link is idle and drops the connection when no answer
#: comes within KEEPALIVE_TIMEOUT_MS; the server accepts pings as often as MIN_PING_INTERVAL_MS.
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
MIN_PING_INTERVAL_MS = 10_000


def service_config(lb: str = "ring_hash") -> str:
    """The node channel's ``grpc.service_config`` (JSON): ``ring_hash`` on the ``mvic-group`` header with gRPC's
    default ring sizes (which ``mvic.fusion_server.ring`` reproduces), or ``pick_first``."""
    if lb not in LB_POLICIES:
        raise ValueError(f"load-balancing policy {lb!r} is not one of {', '.join(LB_POLICIES)}")
    policy = {RING_HASH_POLICY_NAME: {"requestHashHeader": GROUP_METADATA_KEY}} if lb == "ring_hash" \
        else {"pick_first": {}}
    return json.dumps({"loadBalancingConfig": [policy]})


def max_message_bytes(max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES) -> int:
    """gRPC message size limit for a given bitstream limit, bytes."""
    return max_packet_bytes + MESSAGE_OVERHEAD_BYTES


def _common_options(max_packet_bytes: int) -> tuple[tuple[str, int], ...]:
    """Bounded messages and keepalive, the same on both ends."""
    limit = max_message_bytes(max_packet_bytes)
    return (
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
    )


def server_options(max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES) -> tuple[tuple[str, int], ...]:
    """Channel arguments for ``grpc.aio.server(options=...)``: bounded messages, keepalive both ways, and an
    exclusive port (gRPC's default SO_REUSEPORT would let a second server bind the same port and take half the
    cameras; without it a busy port fails to bind)."""
    return _common_options(max_packet_bytes) + (
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.so_reuseport", 0),
    )


def channel_options(max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES) -> tuple[tuple[str, int], ...]:
    """Channel arguments for a node's ``grpc.aio.insecure_channel(options=...)``."""
    return _common_options(max_packet_bytes) + (("grpc.http2.max_pings_without_data", 0),)
