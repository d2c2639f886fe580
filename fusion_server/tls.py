"""Mutual TLS for the gRPC port: the server's certificate and the camera CA, rotated without a restart.

    node -> **TLS handshake** -> peer (identity) -> admission -> receive -> ...

Hop before: a camera node dials with its own certificate (``mvic.node.config.TlsConfig``).
Hop after: ``peer.peer_from`` reads the verified client certificate of each stream.

``server_credentials`` builds ``grpc.dynamic_ssl_server_credentials`` with ``require_client_authentication``: gRPC
calls the fetcher before each new connection's handshake; it looks at ``tls.cert``, ``tls.key`` and
``tls.client_ca`` (mtime and size) at most every ``tls.reload_s`` and, when they changed, hands gRPC the new
certificate and CA bundle. Open connections keep the certificate they were made with; new ones get the new one. A
new file set that does not load (unreadable, not PEM, a key that does not match the certificate) is logged at
ERROR and the last good one stays in use.

A failed handshake (no client certificate, one from another CA, an expired one) never reaches the servicer: the
client sees UNAVAILABLE, and gRPC's C core logs the reason on stderr ("Handshake failed with error ...: certificate
has expired", shown at its default ``GRPC_VERBOSITY``), not through Python logging.
"""

from __future__ import annotations

import logging

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mvic.fusion_server.config import TlsConfig
from mvic.fusion_server.errors import ConfigError
from mvic.shared.watched import WatchedFiles

log = logging.getLogger(__name__)


def _check(cert: bytes, key: bytes, ca: bytes) -> None:
    """ValueError unless the files are PEM, the key is the certificate's, and the CA bundle holds a certificate."""
    leaf = x509.load_pem_x509_certificates(cert)[0]
    private = serialization.load_pem_private_key(key, password=None)
    if private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != leaf.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ValueError("the key does not belong to the certificate")
    x509.load_pem_x509_certificates(ca)


class ReloadingCertificates:
    """The fetcher of ``grpc.dynamic_ssl_server_credentials``: the current files as a certificate configuration."""

    def __init__(self, config: TlsConfig):
        self._watch = WatchedFiles([config.cert, config.key, config.client_ca], config.reload_s)
        try:
            self.initial = self._load()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"tls: cannot use {config.cert}, {config.key} and {config.client_ca}: {exc}") from None
        self.reloads = 0

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key, ca = self._watch.take()
        _check(cert, key, ca)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """None (keep the current one) unless the files changed and load (called by gRPC before each handshake)."""
        try:
            if not self._watch.changed():
                return None
            configuration = self._load()
        except (OSError, ValueError) as exc:
            log.error("TLS files %s changed but cannot be used (%s); keeping the last good certificate and CA",
                      ", ".join(self._watch.paths), exc)
            return None
        except Exception:  # never let an exception escape into gRPC's handshake
            log.exception("reloading the TLS files failed; keeping the last good certificate and CA")
            return None
        self.reloads += 1
        log.info("TLS certificate and client CA re-read from %s: new connections use them", self._watch.paths[0])
        return configuration


def server_credentials(config: TlsConfig) -> grpc.ServerCredentials:
    """Mutual-TLS credentials that follow the files (ConfigError when they cannot be used at start)."""
    fetcher = ReloadingCertificates(config)
    return grpc.dynamic_ssl_server_credentials(fetcher.initial, fetcher, require_client_authentication=True)
