"""The fusion server's errors: refused streams and rejected packets. Status codes are chosen in ``status.py`` only.

    MVICError (mvic.shared.errors)
    ├── ConfigError (shared)          server.yaml or a flag that cannot be used (key path in the message)
    └── ServerError
        ├── AckJournalError           out/acks.json cannot be read; mvic-server will not start until it is fixed
        ├── NotReadyError             the model is still loading or the server is draining; retry later
        │   ├── StorageError              a camera's frames could not be stored; reconnect and resend them
        │   └── NotOwnerError             (cluster) another server owns the camera group; reconnect at once
        ├── StreamError               the stream breaks the protocol (no Hello first, a second Hello, a message
        │                             that is not a mvic.v1.NodeMessage)
        ├── StreamTimeoutError        no Hello within admission.hello_timeout_s, or nothing within idle_timeout_s
        ├── TooManyStreamsError       the peer address already has admission.max_streams_per_peer streams open
        ├── StreamReplacedError       the same camera opened a newer stream; this one ends
        ├── HandshakeError            a Hello the server refuses; the stream ends
        │   ├── BadHelloError             malformed Hello (camera id, metadata disagreeing with it)
        │   ├── UnknownCameraError        camera not in the configured list
        │   ├── TooManyCamerasError       more distinct cameras than max_cameras
        │   ├── IncompatibleNodeError     other model id, weights hash or bitstream format version
        │   ├── IdentityError             (mTLS) the client certificate names another camera, group or trust domain
        │   ├── TokenError                (tls.tokens) no bearer token, or not the camera's one
        │   ├── RevokedError              (mTLS) the certificate's serial or camera is in tls.revoked; also ends an
        │   │                             open stream at its next message
        │   └── CameraInUseError          (plaintext) the camera is connected from another address; a stream may
        │                                 replace it only from the same address
        └── PacketRejected            one packet is dropped for good; the stream and other cameras go on
            ├── MalformedPacketError      bitstream does not parse or disagrees with its ViewPacket
            │   └── CaptureTimeError          capture time outside the window around the server's clock
            ├── PacketTooLargeError       bitstream over max_packet_bytes
            │   └── ViewTooLargeError         view declares more pixels than limits.max_view_pixels
            ├── PacketModelMismatchError  coded with another model or weights than the server holds
            ├── DecodeFailedError         entropy decoding desynchronised for this view
            └── OutOfOrderError           sequence below the last one admitted, neither stored nor in flight
"""

from __future__ import annotations

from mvic.shared.errors import ConfigError as ConfigError  # re-exported: config errors are the shared kind
from mvic.shared.errors import MVICError


class ServerError(MVICError):
    """Base class of the fusion server's own errors."""


class AckJournalError(ServerError):
    """The ack journal (``out/acks.json``) cannot be read; the message names the file and what to do."""


class NotReadyError(ServerError):
    """The server cannot take streams right now."""


class StorageError(NotReadyError):
    """Reconstructions (or the ack journal) could not be written: disk full, too many open files. The camera's
    stream ends so that its node reconnects and resends the frames, which are then decoded and written again."""


class NotOwnerError(NotReadyError):
    """In a cluster, another server owns the stream's camera group (``cluster.Membership``), or took it over while
    the stream was open. The node re-resolves the servers' name and reconnects at once: its ring_hash channel then
    picks the owner (``owner``, also sent in the ``mvic-owner`` trailer)."""

    def __init__(self, message: str, owner: str):
        super().__init__(message)
        self.owner = owner


class StreamError(ServerError):
    """A stream that does not follow the protocol."""


class StreamTimeoutError(ServerError):
    """A stream that sent no Hello, or no message at all, within its deadline (``admission`` in server.yaml)."""


class TooManyStreamsError(ServerError):
    """The stream's peer address already holds ``admission.max_streams_per_peer`` open streams."""


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


class IdentityError(HandshakeError):
    """The stream's client certificate does not prove the camera its Hello names (or proves no camera at all)."""


class TokenError(HandshakeError):
    """``tls.tokens`` is configured and the stream carries no bearer token, or not the one of its camera."""


class RevokedError(HandshakeError):
    """The stream's certificate (its serial) or its camera is listed in ``tls.revoked``."""


class CameraInUseError(HandshakeError):
    """Without TLS: the camera already has a stream from another client address, which a newer stream may not take
    over (it could be anyone); the newer one is refused while the old one is alive."""


class PacketRejected(ServerError):
    """One packet the server will never decode; carries its sequence number."""

    reason = "rejected"  # metric label, from a bounded set

    def __init__(self, sequence: int, message: str):
        super().__init__(message)
        self.sequence = sequence


class MalformedPacketError(PacketRejected):
    """The bitstream does not parse, or its header disagrees with the ViewPacket or the camera."""

    reason = "malformed"


class CaptureTimeError(MalformedPacketError):
    """The capture time is further ahead of the server's clock than ``admission.max_capture_ahead_s``, or older than
    ``admission.max_capture_age_s``: the camera's clock is wrong (set it with NTP)."""

    reason = "capture_time"


class PacketTooLargeError(PacketRejected):
    """The bitstream is larger than the server's max_packet_bytes."""

    reason = "too_large"


class ViewTooLargeError(PacketTooLargeError):
    """The view declares an image larger than the server's limits.max_view_pixels: decoding it would cost more
    than the server allows for one view (the same protocol code as an oversized packet, TOO_LARGE)."""

    reason = "too_many_pixels"


class PacketModelMismatchError(PacketRejected):
    """The view was coded with another model or other weights."""

    reason = "model_mismatch"


class DecodeFailedError(PacketRejected):
    """Entropy decoding desynchronised for this view."""

    reason = "decode_failed"


class OutOfOrderError(PacketRejected):
    """The sequence number is below the last one admitted and the packet is not a resend of a frame that is stored,
    in flight, or released for a retry."""

    reason = "out_of_order"
