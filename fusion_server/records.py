"""Typed records that travel through the server: receive -> group -> joint decode -> sink -> ack.

The servicer turns protobuf messages into ``IncomingPacket`` (and the Hello into the shared
``mvic.shared.rpc.hello.Hello``); the core admits packets as ``ReceivedView``; the grouper emits ``ViewSet`` (one
timestamp's views of a camera group); the decode stage returns ``DecodeResult``; the sink stage writes its frames and
the ack book (``acks.AckBook``) turns them into per-camera acks, which reach the servicer as ``Outgoing`` events.
None of them knows gRPC.

Words: a *camera group* (``group_id``) is the set of cameras that see one scene; a *view set* is one timestamp's
views of one camera group (``mvic.shared.view_sets``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mvic.fusion_server.errors import PacketRejected, ServerError
from mvic.shared.bitstream import ViewBitstream


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
    group_id: str  # camera group
    sequence: int
    capture_ns: int
    received_ns: int
    bitstream_bytes: int  # size of the packed bitstream, bytes
    bitstream: ViewBitstream  # the parsed packet: header and entropy-coded streams


@dataclass(frozen=True)
class ViewSet:
    """One timestamp's views of one camera group, at most one per camera, sorted by camera id."""

    group_id: str  # the camera group
    anchor_ns: int  # capture time the set was opened with, camera clock
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


class FailedView(NamedTuple):
    """A view the decode stage could not reconstruct, rejected for good."""

    view: ReceivedView
    error: PacketRejected


@dataclass(frozen=True)
class DecodeResult:
    """What the decode stage made of one view set."""

    view_set: ViewSet
    frames: tuple[DecodedFrame, ...]
    failed: tuple[FailedView, ...]
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
