"""The handshake of every Fusion.Stream as typed records both ends share: the node's Hello, the server's Welcome.

Hop before: the node's link (``mvic.node.link.Link``) builds a ``Hello`` from its config and model, sends
``to_proto()`` and sets ``metadata()`` as the stream's headers.
Hop after: the fusion server's servicer reads it back with ``from_proto``; its core (``mvic.fusion_server.core``)
calls ``check`` with the stream headers, compares model, weights and format version with its own, and answers a
``Welcome`` (``to_proto``), which the node reads back with ``Welcome.from_proto``.

Both carry ``mvic_version()``, the one version string of an MVIC installation, for the other end's logs.
Pure data: no torch, no gRPC calls; ``check`` raises ``mvic.shared.errors.HelloError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from mvic.shared.bitstream import WEIGHTS_HASH_BYTES
from mvic.shared.errors import HelloError, IdError
from mvic.shared.ids import display, validate_camera_id, validate_group_id
from mvic.shared.rpc import CAMERA_METADATA_KEY, DEFAULT_MAX_PACKET_BYTES, GROUP_METADATA_KEY
from mvic.shared.rpc import mvic_pb2 as pb

#: Longest Hello.node_version a server takes, UTF-8 bytes (a version string such as "1.4.0+g3f2a1c9.dirty").
MAX_VERSION_BYTES = 128


def mvic_version() -> str:
    """The MVIC version of this installation (Hello.node_version, Welcome.server_version); "0+unknown" when running
    from a source tree that was never installed."""
    try:
        return version("mvic")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Hello:
    """Who a node is and what it codes with (``mvic.v1.Hello``, field for field)."""

    camera_id: str  # e.g. "C1"; the rule: mvic.shared.ids.validate_camera_id
    group_id: str  # camera group; "" = the server's default; the rule: mvic.shared.ids.validate_group_id
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
        """Raise HelloError when the ids are malformed, the weights hash or node version has the wrong size, or the
        stream headers (lower-case keys; a missing header is not checked) disagree with the ids."""
        try:
            validate_camera_id(self.camera_id)
            validate_group_id(self.group_id)
        except IdError as exc:
            raise HelloError(f"{exc}; fix the node's --camera / --group") from None
        if len(self.weights_hash) != WEIGHTS_HASH_BYTES:
            raise HelloError(f"weights_hash is {len(self.weights_hash)} bytes, not {WEIGHTS_HASH_BYTES} (the first "
                             "bytes of the weights file's sha256); this is not an MVIC node")
        if len(self.node_version.encode("utf-8", "surrogatepass")) > MAX_VERSION_BYTES:
            raise HelloError(f"node_version {display(self.node_version)} is longer than {MAX_VERSION_BYTES} bytes; "
                             "this is not an MVIC node")
        for key, value in self.metadata():
            header = (metadata or {}).get(key)
            if header is not None and header != value:
                raise HelloError(f"stream metadata {key}={display(header)} disagrees with the Hello "
                                 f"({display(value)}); a router or proxy rewrote the stream's headers")


@dataclass(frozen=True)
class Welcome:
    """The server's answer to an accepted Hello (``mvic.v1.Welcome``, field for field)."""

    acked_sequence: int  # highest sequence of this camera the server has durably stored (0 when has_acked is False)
    has_acked: bool  # False: the server holds nothing of this camera
    max_packet_bytes: int  # largest ViewPacket.bitstream the server takes, bytes; 0 = DEFAULT_MAX_PACKET_BYTES
    server_version: str  # MVIC version string of the server, for logs

    def to_proto(self) -> pb.Welcome:
        return pb.Welcome(acked_sequence=self.acked_sequence, has_acked=self.has_acked,
                          max_packet_bytes=self.max_packet_bytes, server_version=self.server_version)

    @classmethod
    def from_proto(cls, msg: pb.Welcome) -> Welcome:
        return cls(msg.acked_sequence, msg.has_acked, msg.max_packet_bytes, msg.server_version)

    @property
    def stored_through(self) -> int:
        """Every sequence up to this one is stored at the server (0: none)."""
        return self.acked_sequence if self.has_acked else 0

    def packet_limit(self, ceiling: int) -> int:
        """Largest bitstream to send on this stream, bytes: the server's limit, at most ``ceiling``."""
        return min(self.max_packet_bytes or DEFAULT_MAX_PACKET_BYTES, ceiling)
