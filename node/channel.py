"""The link's gRPC channel to the fusion server: plaintext, or mutual TLS with this camera's certificate.

The target may name several servers (``dns:///mvic-server.ns.svc.cluster.local:50051`` resolving to each of them,
or ``ipv4:10.0.0.1:50051,10.0.0.2:50051``): the channel's ``ring_hash`` policy (``link.lb``; service config from
``mvic.shared.rpc.service_config``) hashes the stream's ``mvic-group`` header, so that every camera of a group
reaches the same server, the one the servers' own ring names (``mvic.fusion_server.ring``). grpcio honours the
header only with ``RING_HASH_HEADER_ENV`` set to true before the channel parses its service config:
``enable_ring_hash_header`` sets it (``mvic-node``'s ``main``) and checks with a call over loopback that it took
effect; a channel opened without it falls back to ``pick_first`` with a WARNING instead of failing every call.

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
import os
from concurrent.futures import ThreadPoolExecutor

import grpc

from mvic.node.config import TlsConfig
from mvic.shared.rpc import GROUP_METADATA_KEY, RING_HASH_HEADER_ENV, service_config
from mvic.shared.watched import WatchedFiles

log = logging.getLogger(__name__)


def ring_hash_header_enabled() -> bool:
    """The environment lets grpcio's ring_hash policy hash a request header (set by ``enable_ring_hash_header``)."""
    return os.environ.get(RING_HASH_HEADER_ENV, "").strip().lower() in ("true", "1", "yes")


def enable_ring_hash_header() -> bool:
    """Set ``RING_HASH_HEADER_ENV`` for this process (call before any channel exists) and check that grpcio honours
    it: a ring_hash call to a loopback server without handlers must reach it (UNIMPLEMENTED) rather than fail in
    the picker. True when it does."""
    os.environ[RING_HASH_HEADER_ENV] = "true"
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    try:
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        options = [("grpc.service_config", service_config("ring_hash"))]
        with grpc.insecure_channel(f"ipv4:127.0.0.1:{port}", options=options) as channel:
            try:
                channel.unary_unary("/mvic.check.RingHash/Header")(b"", metadata=((GROUP_METADATA_KEY, "check"),),
                                                                   timeout=10)
            except grpc.RpcError as exc:
                return exc.code() == grpc.StatusCode.UNIMPLEMENTED
            return True
    finally:
        server.stop(None)


class ChannelFactory:
    def __init__(self, target: str, options: list[tuple[str, int | str]], tls: TlsConfig | None = None,
                 lb: str = "ring_hash"):
        self.target = target
        if lb == "ring_hash" and not ring_hash_header_enabled():
            log.warning("link.lb ring_hash needs %s=true in the environment (mvic-node sets it); using pick_first: "
                        "with several servers behind %s the cameras of a group may reach different ones",
                        RING_HASH_HEADER_ENV, target)
            lb = "pick_first"
        self.lb = lb
        self.options = [*options, ("grpc.service_config", service_config(lb))]
        self.tls = tls if tls is not None and tls.enabled else None
        paths = [self.tls.ca, self.tls.cert, self.tls.key, *([self.tls.token_file] if self.tls.token_file else [])] \
            if self.tls else []
        self._files = WatchedFiles(paths, self.tls.reload_s) if self.tls else None
        self._pending: tuple[bytes, ...] | None = None  # renewed files read, not yet in a channel

    def open(self) -> grpc.aio.Channel:
        """A new channel with the current files (OSError when they cannot be read)."""
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        files, self._pending = self._pending or self._files.take(), None
        ca, cert, key, *token = files
        options = list(self.options)
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        if token:  # authorization: Bearer <token> on every call; gRPC sends call credentials over TLS only
            bearer = grpc.access_token_call_credentials(token[0].decode("utf-8", "replace").strip())
            credentials = grpc.composite_channel_credentials(credentials, bearer)
        return grpc.aio.secure_channel(self.target, credentials, options=options)

    def renewed(self) -> bool:
        """True once when the certificate (or token) files changed and can be read: open a new channel with them."""
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
