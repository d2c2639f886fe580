"""A camera's identity in its TLS certificate: one URI SAN, ``spiffe://<trust-domain>/group/<group>/camera/<camera>``.

The one rule that ``mvic-certs`` (which writes it) and the fusion server (which reads it from the client certificate
of each mTLS stream and compares it with the stream's Hello) share. The group is the camera group (``""`` is the
server's default group and is written as ``_``); both ids follow ``mvic.shared.ids`` and are percent-encoded in the
URI. gRPC's ``peer_identities()`` returns the SANs, not the subject CN, once any SAN is present: the server reads this
field explicitly from the certificate.

Pure functions, no cryptography import: parsing the certificate itself is the caller's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from mvic.shared.errors import IdError
from mvic.shared.ids import validate_camera_id, validate_group_id

SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "mvic.local"  # mvic-certs' and the server's default trust domain
DEFAULT_GROUP_SEGMENT = "_"  # the URI form of group "" (the server's default group)
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,253}[a-z0-9])?$")
_PATH = re.compile(r"^/group/([^/]+)/camera/([^/]+)$")


@dataclass(frozen=True)
class CameraIdentity:
    trust_domain: str
    group_id: str
    camera_id: str

    def uri(self) -> str:
        group = quote(self.group_id, safe="") if self.group_id else DEFAULT_GROUP_SEGMENT
        return f"{SCHEME}{self.trust_domain}/group/{group}/camera/{quote(self.camera_id, safe='')}"


def camera_identity(trust_domain: str, group_id: str, camera_id: str) -> CameraIdentity:
    """A checked identity; IdError names what is wrong."""
    if not _TRUST_DOMAIN.match(trust_domain):
        raise IdError(f"trust domain {trust_domain[:80]!r} must be a lower-case DNS-like name, e.g. mvic.example")
    validate_group_id(group_id)
    validate_camera_id(camera_id)
    if group_id == DEFAULT_GROUP_SEGMENT:
        raise IdError(f"group id {DEFAULT_GROUP_SEGMENT!r} is reserved for the default group in certificates")
    return CameraIdentity(trust_domain, group_id, camera_id)


def parse_camera_uri(uri: str) -> CameraIdentity:
    """The identity a URI SAN names; IdError for anything that is not exactly one MVIC camera URI."""
    if not uri.startswith(SCHEME):
        raise IdError(f"not a camera identity URI (expected {SCHEME}<domain>/group/<group>/camera/<camera>)")
    rest = uri[len(SCHEME):]
    domain, slash, path = rest.partition("/")
    m = _PATH.match(slash + path)
    if not m:
        raise IdError("not a camera identity URI (expected /group/<group>/camera/<camera> after the domain)")
    try:
        group = "" if m.group(1) == DEFAULT_GROUP_SEGMENT else unquote(m.group(1), errors="strict")
        camera = unquote(m.group(2), errors="strict")
    except UnicodeDecodeError:
        raise IdError("a camera identity URI whose ids are not UTF-8") from None
    return camera_identity(domain, group, camera)
