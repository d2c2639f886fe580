"""Who is at the other end of a stream: its address and, with mutual TLS, the camera its certificate proves.

    node -> TLS handshake (``tls``) -> **peer** -> admission -> receive -> ...

Hop before: the servicer reads the client address and the verified client certificate (``x509_pem_cert`` of gRPC's
auth context: the chain was checked against ``tls.client_ca`` during the handshake) and calls ``peer_from``.
Hop after: the core (``core.FusionCore.connect``) compares the certificate's identity with the Hello
(``check_identity``), asks ``Revocations`` whether the certificate or camera is revoked (at the Hello and at every
later message), and lets a newer stream replace a camera's stream only when it is as much that camera
(``may_replace``).

The identity is the one URI SAN ``spiffe://<trust-domain>/group/<group>/camera/<id>`` (``mvic.shared.identity``),
read from the certificate explicitly: gRPC's ``peer_identities()`` returns the SANs, not the CN, once any SAN is
present, and mixes DNS and URI names. No gRPC here; ``cryptography`` parses the certificate.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from mvic.fusion_server.errors import CameraInUseError, IdentityError, RevokedError
from mvic.shared.errors import IdError
from mvic.shared.identity import CameraIdentity, parse_camera_uri
from mvic.shared.ids import display
from mvic.shared.watched import DEFAULT_INTERVAL_S, WatchedTable

log = logging.getLogger(__name__)

#: Characters of a certificate subject shown in a log line or an error message.
SUBJECT_CHARS = 120
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class PeerCertificate:
    """What the server takes from a verified client certificate."""

    subject: str  # RFC 4514, for logs
    serial: str  # lower-case hex, no leading zeros
    identity: CameraIdentity | None  # None: no single MVIC camera URI SAN
    problem: str = ""  # why identity is None


@dataclass(frozen=True)
class Peer:
    address: str  # client address without the port (``admission.peer_address``)
    certificate: PeerCertificate | None = None  # None: a plaintext stream

    def describe(self) -> str:
        """For a log line: the address, and the certificate's subject and serial when there is one."""
        if self.certificate is None:
            return display(self.address)
        c = self.certificate
        return f"{display(self.address)} (certificate {display(c.subject, SUBJECT_CHARS)}, serial {c.serial})"


#: The peer of a stream whose address is not known (the core driven without sockets, in tests).
NO_PEER = Peer("")


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def parse_certificate(pem: bytes) -> PeerCertificate:
    """The subject, serial and camera identity of a PEM certificate (ValueError when it does not parse)."""
    cert = x509.load_pem_x509_certificate(pem)
    subject, serial = cert.subject.rfc4514_string(), serial_hex(cert.serial_number)
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        return PeerCertificate(subject, serial, None, f"it holds {len(uris)} URI SANs, not exactly one camera URI")
    try:
        return PeerCertificate(subject, serial, parse_camera_uri(uris[0]))
    except IdError as exc:
        return PeerCertificate(subject, serial, None, f"its URI SAN {display(uris[0])} is {exc}")


def peer_from(address: str, auth_context: dict[str, list[bytes]] | None) -> Peer:
    """The peer of a stream from gRPC's ``context.auth_context()`` (no certificate on a plaintext stream)."""
    pems = (auth_context or {}).get("x509_pem_cert") or []
    if not pems:
        return Peer(address)
    try:
        return Peer(address, parse_certificate(pems[0]))
    except ValueError as exc:  # verified by the handshake, so this is unexpected
        return Peer(address, PeerCertificate("?", "?", None, f"it does not parse ({exc})"))


def check_identity(peer: Peer, camera: str, group: str, trust_domain: str) -> None:
    """Raise IdentityError unless the peer's certificate proves ``camera`` of ``group`` in ``trust_domain``."""
    c = peer.certificate
    if c is None:
        raise IdentityError("this server requires a client certificate naming the camera (mutual TLS)")
    who = f"certificate {display(c.subject, SUBJECT_CHARS)} (serial {c.serial})"
    ident = c.identity
    if ident is None:
        raise IdentityError(f"{who} names no camera: {c.problem}; issue one with mvic-certs camera")
    if ident.trust_domain != trust_domain:
        raise IdentityError(f"{who} belongs to trust domain {display(ident.trust_domain)}, this server serves "
                            f"{display(trust_domain)} (tls.trust_domain)")
    if (ident.camera_id, ident.group_id) != (camera, group):
        raise IdentityError(f"{who} is camera {display(ident.camera_id)} of group {display(ident.group_id)}; the "
                            f"Hello claims camera {display(camera)} of group {display(group)}; fix the node's "
                            "--camera / --group or give it its own certificate")


def may_replace(old: Peer | None, new: Peer, camera: str) -> None:
    """Raise CameraInUseError unless ``new`` may take over the open stream of ``camera`` held by ``old``.

    With certificates the identity was checked already, so a proven camera may always replace its own stream (a
    reconnect after a network change). Without them, only a stream from the same client address may: a stream from
    elsewhere is refused while the old one is alive (it ends by itself, idle_timeout_s or keepalive, when its node
    is really gone)."""
    if old is None or new.certificate is not None or old.address == new.address:
        return
    raise CameraInUseError(f"camera {display(camera)} is connected from another address; without TLS a stream may "
                           "replace it only from the same address. Retry when the old stream has ended, or configure "
                           "mutual TLS so that the camera can prove who it is")


class Revocations:
    """The revoked certificate serials (hex) and camera ids of ``tls.revoked``, re-read when the file changes (at
    most every ``interval_s``). A file that cannot be read keeps the last good list (an ERROR in the log)."""

    def __init__(self, path: str, interval_s: float = DEFAULT_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self._table = WatchedTable(path, self._parse, frozenset(), what="the revocation list", kept="the last one read",
                                   log=log, interval_s=interval_s, clock=clock)

    def _parse(self, data: bytes) -> frozenset[str]:
        entries = set()
        for line in data.decode("utf-8", "replace").splitlines():
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            entries.add(entry)
            hexa = entry.lower().removeprefix("0x").replace(":", "")
            if _HEX.match(hexa):
                entries.add(hexa.lstrip("0") or "0")
        log.info("revocation list %s: %d entr%s", self.path, len(entries), "y" if len(entries) == 1 else "ies")
        return frozenset(entries)

    def check(self, peer: Peer | None, camera: str) -> None:
        """Raise RevokedError when the peer's certificate serial or ``camera`` is revoked."""
        if not self._table.enabled:
            return
        entries = self._table.current()
        serial = peer.certificate.serial if peer is not None and peer.certificate is not None else None
        if serial in entries or camera in entries:
            what = f"certificate serial {serial}" if serial in entries else f"camera {display(camera)}"
            raise RevokedError(f"{what} is revoked (tls.revoked); issue the camera a new certificate and remove it "
                               "from the list if this is a mistake")
