"""The one place where the server's domain errors become gRPC status codes and protocol error codes.

Used by the servicer only (the core raises and records ``errors.ServerError`` subclasses and knows nothing of gRPC).
Stream-ending errors map to a ``grpc.StatusCode``; rejected packets map to a ``mvic.v1.ErrorCode`` sent in a
PacketError (the stream goes on), whose status-code semantics are listed in ``mvic.proto``.
"""

from __future__ import annotations

import grpc

from mvic.fusion_server import errors as e
from mvic.shared.rpc import OWNER_METADATA_KEY
from mvic.shared.rpc import mvic_pb2 as pb

# Most specific first: the first matching class wins.
_STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (e.NotReadyError, grpc.StatusCode.UNAVAILABLE),
    (e.StreamReplacedError, grpc.StatusCode.ABORTED),
    (e.StreamTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (e.TooManyStreamsError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.StreamError, grpc.StatusCode.INVALID_ARGUMENT),
    (e.BadHelloError, grpc.StatusCode.INVALID_ARGUMENT),
    (e.UnknownCameraError, grpc.StatusCode.PERMISSION_DENIED),
    (e.IdentityError, grpc.StatusCode.PERMISSION_DENIED),
    (e.TokenError, grpc.StatusCode.UNAUTHENTICATED),
    (e.RevokedError, grpc.StatusCode.PERMISSION_DENIED),
    (e.CameraInUseError, grpc.StatusCode.ALREADY_EXISTS),
    (e.TooManyCamerasError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.IncompatibleNodeError, grpc.StatusCode.FAILED_PRECONDITION),
    (e.MalformedPacketError, grpc.StatusCode.INVALID_ARGUMENT),
    (e.PacketTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.PacketModelMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (e.DecodeFailedError, grpc.StatusCode.DATA_LOSS),
    (e.OutOfOrderError, grpc.StatusCode.ALREADY_EXISTS),
)

_ERROR_CODE: tuple[tuple[type[e.PacketRejected], int], ...] = (
    (e.MalformedPacketError, pb.ERROR_CODE_MALFORMED),
    (e.PacketTooLargeError, pb.ERROR_CODE_TOO_LARGE),
    (e.PacketModelMismatchError, pb.ERROR_CODE_MODEL_MISMATCH),
    (e.DecodeFailedError, pb.ERROR_CODE_DECODE_FAILED),
    (e.OutOfOrderError, pb.ERROR_CODE_OUT_OF_ORDER),
)


def status_for(exc: Exception) -> grpc.StatusCode:
    """gRPC status for an error that ends a stream; INTERNAL for anything unforeseen."""
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def trailers_for(exc: Exception) -> tuple[tuple[str, str], ...]:
    """Trailing metadata of a stream that ends with ``exc``: the owner's address when another server of the cluster
    owns the camera group (``OWNER_METADATA_KEY``), else nothing."""
    if isinstance(exc, e.NotOwnerError):
        return ((OWNER_METADATA_KEY, exc.owner),)
    return ()


def error_code_for(exc: e.PacketRejected) -> int:
    """mvic.v1.ErrorCode for a rejected packet."""
    for cls, code in _ERROR_CODE:
        if isinstance(exc, cls):
            return code
    return pb.ERROR_CODE_UNSPECIFIED
