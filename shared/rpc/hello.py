"""The Hello, first message of every Fusion.Stream, as one typed record both ends share.

Hop before: the node's link (``mvic.node.link.Link``) builds one from its config and model, sends ``to_proto()``
and sets ``metadata()`` as the stream's headers.
Hop after: the fusion server's servicer reads it back with ``from_proto``; its core (``mvic.fusion_server.core``)
calls ``check`` with the stream headers, then compares model, weights and format version with its own.

Pure data: no torch, no gRPC calls; ``check`` raises ``mvic.shared.errors.HelloError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mvic.shared.bitstream import MAX_CAMERA_ID_BYTES
from mvic.shared.errors import HelloError
from mvic.shared.rpc import CAMERA_METADATA_KEY, GROUP_METADATA_KEY
from mvic.shared.rpc import mvic_pb2 as pb


@dataclass(frozen=True)
class Hello:
    """Who a node is and what it codes with (``mvic.v1.Hello``, field for field)."""

    camera_id: str  # e.g. "C1"; 1..64 printable UTF-8 bytes
    group_id: str  # camera group; "" = the server's default; 0..64 printable UTF-8 bytes
    model_id: int  # from mvic.shared.model_table
    weights_hash: bytes  # first 8 bytes of the weights file's sha256
    format_version: int  # bitstream format version the node writes
    node_version: str  # MVIC version string of the node, for logs
    session_ns: int  # node start, ns since the Unix epoch (tells a restart from a reconnect)

    def to_proto(self) -> pb.Hello:
        return pb.Hello(camera_id=self.camera_id, group_id=self.group_id, model_id=self.model_id,
                        weights_hash=self.weights_hash, format_version=self.format_version,
                        node_version=self.node_version, session_ns=self.session_ns)

    @classmethod
    def from_proto(cls, msg: pb.Hello) -> Hello:
        return cls(msg.camera_id, msg.group_id, msg.model_id, bytes(msg.weights_hash), msg.format_version,
                   msg.node_version, msg.session_ns)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The stream headers a node sets, so that a router can place the stream without parsing messages."""
        return (CAMERA_METADATA_KEY, self.camera_id), (GROUP_METADATA_KEY, self.group_id)

    def check(self, metadata: Mapping[str, str] | None = None) -> None:
        """Raise HelloError when the ids are malformed or the stream headers (lower-case keys; a missing header
        is not checked) disagree with them."""
        cam, group = self.camera_id, self.group_id
        if not (1 <= len(cam.encode()) <= MAX_CAMERA_ID_BYTES and cam.isprintable()):
            raise HelloError(f"camera id {cam!r} must be 1..{MAX_CAMERA_ID_BYTES} printable UTF-8 bytes")
        if len(group.encode()) > MAX_CAMERA_ID_BYTES or not group.isprintable():
            raise HelloError(f"group id {group!r} must be 0..{MAX_CAMERA_ID_BYTES} printable bytes")
        for key, value in self.metadata():
            header = (metadata or {}).get(key)
            if header is not None and header != value:
                raise HelloError(f"stream metadata {key}={header!r} disagrees with the Hello ({value!r})")
