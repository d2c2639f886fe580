"""Per-camera bearer tokens, on top of mutual TLS (issue 14, item 6): for sites that issue tokens to cameras.

    node -> TLS handshake (``tls``) -> peer (certificate identity) -> **token** -> admission -> receive -> ...

Hop before: the servicer hands the stream's headers to ``core.FusionCore.connect``, which has already checked the
certificate's identity against the Hello (``peer.check_identity``). Hop after: revocation, then the camera's slot.

The node sends ``authorization: Bearer <token>`` as gRPC call credentials (``grpc.access_token_call_credentials``:
only on a TLS channel, so a token never travels in the clear). The server keeps no token, only its SHA-256, in
``tls.tokens``: one line per camera, ``<camera> sha256:<64 hex digits>``, ``#`` comments, made by
``mvic-certs token``. The file is re-read when it changes (``mvic.shared.watched``); a file that cannot be read or
parsed keeps the last good table (an ERROR in the log). With the file configured, every camera needs its token: a
camera without a line, a missing header or another token is refused with UNAUTHENTICATED, and a camera whose line
is removed or changed is refused at its next Hello (an open stream goes on until it reconnects, like a renewed
certificate; use ``tls.revoked`` to cut a stream off at once). Tokens are compared in constant time and never
logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Mapping

from mvic.fusion_server.errors import TokenError
from mvic.shared.errors import IdError
from mvic.shared.ids import display, validate_camera_id
from mvic.shared.watched import DEFAULT_INTERVAL_S, WatchedTable

log = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
_LINE = re.compile(r"^(\S+)\s+sha256:([0-9a-fA-F]{64})$")
#: Longest header value looked at (a token of mvic-certs is 43 characters).
MAX_HEADER_CHARS = 1024


def token_digest(token: str) -> str:
    """The hex SHA-256 that ``tls.tokens`` stores for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(text: str) -> dict[str, str]:
    """``{camera: sha256 hex}`` from the file's text; ValueError names the first bad line (never its digest)."""
    table: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"line {number} is not '<camera> sha256:<64 hex digits>'")
        camera, digest = match.groups()
        try:
            validate_camera_id(camera)
        except IdError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        if camera in table:
            raise ValueError(f"line {number}: camera {display(camera)} is listed twice")
        table[camera] = digest.lower()
    return table


def bearer_token(metadata: Mapping[str, str] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, None without one."""
    value = (metadata or {}).get(AUTHORIZATION_KEY, "")
    if not isinstance(value, str) or len(value) > MAX_HEADER_CHARS:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class CameraTokens:
    """The token table of ``tls.tokens`` (empty path: tokens are not used and ``check`` lets every stream by)."""

    def __init__(self, path: str, interval_s: float = DEFAULT_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.path = path
        # at start a file that cannot be read or parsed is an error (OSError, ValueError)
        self._table = WatchedTable(path, self._parse, {}, what="the camera tokens", kept="the last good table",
                                   log=log, interval_s=interval_s, clock=clock)

    @property
    def enabled(self) -> bool:
        return self._table.enabled

    def _parse(self, data: bytes) -> dict[str, str]:
        try:
            table = parse_tokens(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError("not UTF-8 text") from None
        log.info("camera tokens %s: %d camera%s", self.path, len(table), "" if len(table) == 1 else "s")
        return table

    def check(self, camera: str, metadata: Mapping[str, str] | None) -> None:
        """Raise TokenError unless tokens are off or the stream carries ``camera``'s token."""
        if not self._table.enabled:
            return
        expected = self._table.current().get(camera)
        token = bearer_token(metadata)
        if token is None:
            raise TokenError(f"camera {display(camera)} sent no bearer token and this server requires one "
                             "(tls.tokens); give the node its token file (tls.token_file, made by mvic-certs token)")
        if expected is None or not hmac.compare_digest(token_digest(token), expected):
            raise TokenError(f"camera {display(camera)}: the bearer token is not the one tls.tokens holds for this "
                             "camera; issue a new one with mvic-certs token and update both sides")
