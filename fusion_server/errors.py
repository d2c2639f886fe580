"""The fusion server's errors: refused streams and rejected packets. Status codes are chosen in ``status.py`` only.

    MVICError (mvic.shared.errors)
    ├── ConfigError (shared)          server.yaml or a flag that cannot be used (key path in the message)
    └── ServerError
        ├── NotReadyError             the model is still loading or the server is draining; retry later
        ├── StreamError               the stream breaks the protocol (no Hello first, a second Hello)
        ├── StreamReplacedError       the same camera opened a newer stream; this one ends
        ├── HandshakeError            a Hello the server refuses; the stream ends
        │   ├── BadHelloError             malformed Hello (camera id, metadata disagreeing with it)
        │   ├── UnknownCameraError        camera not in the configured list
        │   ├── TooManyCamerasError       more distinct cameras than max_cameras
        │   └── IncompatibleNodeError     other model id, weights hash or bitstream format version
        └── PacketRejected            one packet is dropped for good; the stream and other cameras go on
            ├── MalformedPacketError      bitstream does not parse or disagrees with its ViewPacket
            ├── PacketTooLargeError       bitstream over max_packet_bytes
            ├── PacketModelMismatchError  coded with another model or weights than the server holds
            ├── DecodeFailedError         entropy decoding desynchronised for this view
            └── OutOfOrderError           sequence not above the last one seen and not in flight
"""

from __future__ import annotations

from mvic.shared.errors import ConfigError as ConfigError  # re-exported: config errors are the shared kind
from mvic.shared.errors import MVICError


class ServerError(MVICError):
    """Base class of the fusion server's own errors."""


class NotReadyError(ServerError):
    """The server cannot take streams right now."""


class StreamError(ServerError):
    """A stream that does not follow the protocol."""


class StreamReplacedError(ServerError):
    """A newer stream of the same camera took over (a reconnect while the old stream still looked open)."""


class HandshakeError(ServerError):
    """A Hello the server refuses."""


class BadHelloError(HandshakeError):
    """The Hello itself is malformed."""


class UnknownCameraError(HandshakeError):
    """The camera is not in the server's configured camera list."""


class TooManyCamerasError(HandshakeError):
    """The server already serves max_cameras distinct cameras."""


class IncompatibleNodeError(HandshakeError):
    """The node codes with another model, other weights or another format version."""


class PacketRejected(ServerError):
    """One packet the server will never decode; carries its sequence number."""

    reason = "rejected"  # metric label, from a bounded set

    def __init__(self, sequence: int, message: str):
        super().__init__(message)
        self.sequence = sequence


class MalformedPacketError(PacketRejected):
    """The bitstream does not parse, or its header disagrees with the ViewPacket or the camera."""

    reason = "malformed"


class PacketTooLargeError(PacketRejected):
    """The bitstream is larger than the server's max_packet_bytes."""

    reason = "too_large"


class PacketModelMismatchError(PacketRejected):
    """The view was coded with another model or other weights."""

    reason = "model_mismatch"


class DecodeFailedError(PacketRejected):
    """Entropy decoding desynchronised for this view."""

    reason = "decode_failed"


class OutOfOrderError(PacketRejected):
    """The sequence number is not above the last one seen and the packet is not a resend of one in flight."""

    reason = "out_of_order"
