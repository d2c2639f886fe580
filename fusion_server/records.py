"""Typed records that travel through the server: receive -> group -> joint decode -> sink.

The servicer turns protobuf messages into ``IncomingPacket`` (and the Hello into the shared
``mvic.shared.rpc.hello.Hello``); the core admits packets as ``ReceivedView``; the grouper emits ``ViewGroup``; the
decode stage returns ``GroupResult``; the sink stage turns that into per-camera acks (``Outgoing`` events the servicer
turns back into protobuf). None of them knows gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvic.shared.bitstream import ViewBitstream
from mvic.fusion_server.errors import PacketRejected, ServerError


@dataclass(frozen=True)
class Welcome:
    acked_sequence: int  # 0 = none
    has_acked: bool
    max_packet_bytes: int
    server_version: str


@dataclass(frozen=True)
class IncomingPacket:
    """One ViewPacket as received."""

    sequence: int
    capture_ns: int
    sent_ns: int
    bitstream: bytes
    received_ns: int  # server clock, ns since the Unix epoch


@dataclass(frozen=True)
class ReceivedView:
    """A packet that passed every check and now waits for the other views of its timestamp."""

    camera_id: str
    group_id: str
    sequence: int
    capture_ns: int
    received_ns: int
    bitstream_bytes: int
    view: ViewBitstream


@dataclass(frozen=True)
class ViewGroup:
    """Views of one timestamp from one camera group, at most one per camera, sorted by camera id."""

    group_id: str
    anchor_ns: int  # capture time the group was opened with, camera clock
    views: tuple[ReceivedView, ...]
    opened_s: float  # monotonic time of the first view
    emitted_s: float  # monotonic time the grouper let it go
    complete: bool  # every expected camera is present

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(v.camera_id for v in self.views)


@dataclass(frozen=True)
class DecodedFrame:
    """One reconstructed view."""

    source: ReceivedView
    image: np.ndarray  # (height, width, 3) uint8 RGB


@dataclass(frozen=True)
class GroupResult:
    """What the decode stage made of one group."""

    group: ViewGroup
    frames: tuple[DecodedFrame, ...]
    failed: tuple[tuple[ReceivedView, PacketRejected], ...]
    decode_seconds: float


@dataclass(frozen=True)
class AckEvent:
    acked_sequence: int


@dataclass(frozen=True)
class RejectEvent:
    error: PacketRejected


@dataclass(frozen=True)
class CloseEvent:
    """The server ends the stream: normally (error None) or with the status ``status.status_for(error)`` gives."""

    reason: str
    error: ServerError | None = None


Outgoing = AckEvent | RejectEvent | CloseEvent
