"""The link's gRPC channel to the fusion server: plaintext, or mutual TLS with this camera's certificate.

Hop before: ``mvic.node.link.Link`` asks for a channel at its start and again when ``renewed()`` says that the
certificate files changed. Hop after: the server's TLS handshake (``mvic.fusion_server.tls``), which checks the
certificate against its camera CA; the server then checks that the certificate's URI SAN names this camera.

gRPC Python cannot swap a channel's client certificate, so a renewed certificate means a new channel: the link
finishes its stream (half-close, the server acknowledges what it has), closes the old channel and opens a new one;
what is unacknowledged stays in the spool and is sent again on the new stream. Renewal is seen by the files'
(mtime, size) at most every ``tls.reload_s`` (``mvic.shared.watched``); a file that cannot be read keeps the old
channel (an ERROR in the log) until a good one appears.
"""

from __future__ import annotations

import logging

import grpc

from mvic.node.config import TlsConfig
from mvic.shared.watched import WatchedFiles

log = logging.getLogger(__name__)


class ChannelFactory:
    def __init__(self, target: str, options: list[tuple[str, int | str]], tls: TlsConfig | None = None):
        self.target = target
        self.options = list(options)
        self.tls = tls if tls is not None and tls.enabled else None
        self._files = WatchedFiles([self.tls.ca, self.tls.cert, self.tls.key], self.tls.reload_s) if self.tls else None
        self._pending: tuple[bytes, ...] | None = None  # renewed files read, not yet in a channel

    def open(self) -> grpc.aio.Channel:
        """A new channel with the current files (OSError when they cannot be read)."""
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        files, self._pending = self._pending or self._files.take(), None
        ca, cert, key = files
        options = list(self.options)
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        return grpc.aio.secure_channel(self.target, credentials, options=options)

    def renewed(self) -> bool:
        """True once when the certificate files changed and can be read: open a new channel with them."""
        if self._files is None or not self._files.changed():
            return False
        try:
            files = self._files.take()
        except OSError as exc:
            log.error("TLS files %s changed but cannot be read (%s); keeping the current channel",
                      ", ".join(self._files.paths), exc.strerror or exc)
            return False
        if not all(files):
            log.error("a TLS file of %s is empty (a renewal half written?); keeping the current channel",
                      ", ".join(self._files.paths))
            return False
        self._pending = files
        return True
