"""Mutual TLS on the gRPC port with real certificates (``tests.pki``) over loopback sockets: who may connect, as which
camera, revocation, certificate rotation without a restart, and the plaintext server's safe default."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import time
from dataclasses import replace

import grpc
import pytest
from cryptography import x509

from mvic.fusion_server import cli
from mvic.fusion_server.config import TlsConfig
from mvic.fusion_server.tokens import token_digest
from tests.fusion_server.harness import MiniNode, ServerThread, server_config
from tests.pki import CA, DOMAIN

RELOAD_S = 0.2


@pytest.fixture(scope="module")
def ca():
    return CA()


@pytest.fixture
def pki(tmp_path, ca):
    folder = tmp_path / "pki"
    cert, key = ca.server().write(folder, "server")
    return {"folder": folder, "ca": ca, "tls": TlsConfig(cert=str(cert), key=str(key), client_ca=str(ca.write(folder)),
                                                        trust_domain=DOMAIN, reload_s=RELOAD_S)}


def tls_server(tmp_path, weights, tls: TlsConfig) -> ServerThread:
    return ServerThread(server_config(tmp_path / "out", weights, tls=tls)).start()


def creds(ca_pem: bytes, issued=None) -> grpc.ChannelCredentials:
    if issued is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=issued.key,
                                        certificate_chain=issued.cert)


def _packet(view):
    sequence, capture_ns, bitstream = view
    return sequence, bitstream, capture_ns


def _server_serial(port: int, ca_pem: bytes, issued) -> int:
    """Serial of the certificate the server shows a new connection (read through a fresh handshake)."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    with tempfile.NamedTemporaryFile() as c, tempfile.NamedTemporaryFile() as k:
        c.write(issued.cert)
        c.flush()
        k.write(issued.key)
        k.flush()
        ctx.load_cert_chain(c.name, k.name)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_a_camera_with_its_certificate_streams_and_is_acked(tmp_path, weights, encoder, views, pki):
    srv = tls_server(tmp_path, weights, pki["tls"])
    try:
        node = MiniNode(srv.port, "C1", encoder, credentials=creds(pki["ca"].pem, pki["ca"].camera("C1")))
        node.welcome()
        for view in views["C1"][:2]:
            node.send(*_packet(view))
        assert node.wait_acked(2)
        node.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("case, server_log", [
    ("no client certificate", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    ("another CA", "unable to get local issuer certificate"),
    ("expired", "certificate has expired"),
    ("wrong server name", None),  # the client refuses the server: nothing to log on the server
])
def test_handshake_failures_reach_the_client_as_unavailable(tmp_path, weights, encoder, pki, capfd, case, server_log):
    """gRPC ends these in the TLS handshake, before any handler: the client gets UNAVAILABLE, no stream is counted,
    and the server's reason is logged by gRPC's C core on stderr ("Handshake failed with error ...:
    CERTIFICATE_VERIFY_FAILED: certificate has expired", at gRPC's default verbosity), not through Python
    logging."""
    ca = pki["ca"]
    srv = tls_server(tmp_path, weights, pki["tls"])
    try:
        kwargs = {}
        if case == "no client certificate":
            kwargs["credentials"] = creds(ca.pem)
        elif case == "another CA":
            kwargs["credentials"] = creds(ca.pem, CA("intruder").camera("C1"))
        elif case == "expired":
            kwargs["credentials"] = creds(ca.pem, ca.camera("C1", expired=True))
        else:
            kwargs.update(credentials=creds(ca.pem, ca.camera("C1")), server_name="wrong.example")
        node = MiniNode(srv.port, "C1", encoder, **kwargs)
        assert node.refused().code() == grpc.StatusCode.UNAVAILABLE
        node.close()
        assert srv.app.registry.get_sample_value("mvic_server_connected_cameras") == 0
    finally:
        srv.stop()
    if server_log and os.environ.get("GRPC_VERBOSITY", "").upper() in ("", "DEBUG", "INFO"):
        err = capfd.readouterr().err
        assert "Handshake failed" in err and server_log in err


@pytest.mark.parametrize("cert_args, words", [
    (("C2", ""), "is camera 'C2'"),
    (("C1", "plaza"), "of group 'plaza'"),
    (("C1", "", "other.test"), "trust domain 'other.test'"),
])
def test_a_certificate_of_another_camera_group_or_domain_is_permission_denied(
        tmp_path, weights, encoder, pki, caplog, cert_args, words):
    srv = tls_server(tmp_path, weights, pki["tls"])
    try:
        with caplog.at_level(logging.WARNING, logger="mvic.fusion_server"):
            node = MiniNode(srv.port, "C1", encoder, credentials=creds(pki["ca"].pem, pki["ca"].camera(*cert_args)))
            err = node.refused()
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert words in err.details()
        node.close()
        refused = [r.getMessage() for r in caplog.records if "refused a stream" in r.getMessage()]
        assert refused and "certificate 'CN=camera " in refused[0]  # the subject, escaped and bounded
    finally:
        srv.stop()


def test_a_revoked_camera_is_refused_and_an_open_stream_is_cut_at_its_next_message(
        tmp_path, weights, encoder, views, pki):
    ca = pki["ca"]
    revoked = pki["folder"] / "revoked.txt"
    revoked.write_text("# revoked camera certificates\n")
    c1, c2 = ca.camera("C1"), ca.camera("C2")
    srv = tls_server(tmp_path, weights, replace(pki["tls"], revoked=str(revoked)))
    try:
        node1 = MiniNode(srv.port, "C1", encoder, credentials=creds(ca.pem, c1))
        node1.welcome()
        node1.send(*_packet(views["C1"][0]))
        assert node1.wait_acked(1)
        revoked.write_text(f"{c1.serial:X}  # C1's key leaked\nC2\n")  # a serial (any case) and a camera id
        time.sleep(RELOAD_S * 2)
        node1.send(*_packet(views["C1"][1]))
        err = node1.refused()
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in err.details()
        assert node1.acked == 1
        assert srv.app.registry.get_sample_value("mvic_server_streams_revoked_total") == 1.0  # counted once
        for cam, issued in (("C1", c1), ("C2", c2)):
            again = MiniNode(srv.port, cam, encoder, credentials=creds(ca.pem, issued))
            assert again.refused().code() == grpc.StatusCode.PERMISSION_DENIED
            again.close()
        node1.close()
    finally:
        srv.stop()


def test_server_certificate_rotates_without_restart_and_open_streams_go_on(tmp_path, weights, encoder, views, pki):
    ca, folder = pki["ca"], pki["folder"]
    srv = tls_server(tmp_path, weights, pki["tls"])
    try:
        c1 = ca.camera("C1")
        first = _server_serial(srv.port, ca.pem, c1)
        node = MiniNode(srv.port, "C1", encoder, credentials=creds(ca.pem, c1))
        node.welcome()
        node.send(*_packet(views["C1"][0]))
        assert node.wait_acked(1)
        renewed = ca.server()
        renewed.write(folder, "server")
        (folder / "server.key").write_text("not a key")  # a half-written rotation: the last good pair stays
        time.sleep(RELOAD_S * 2)
        assert _server_serial(srv.port, ca.pem, c1) == first
        renewed.write(folder, "server")
        time.sleep(RELOAD_S * 2)
        assert _server_serial(srv.port, ca.pem, c1) == renewed.serial  # new connections: the new certificate
        node.send(*_packet(views["C1"][1]))  # the open stream keeps working
        assert node.wait_acked(2)
        c2 = MiniNode(srv.port, "C2", encoder, credentials=creds(ca.pem, ca.camera("C2")))
        c2.welcome()
        c2.close()
        node.close()
    finally:
        srv.stop()


def test_plaintext_server_refuses_a_public_address_without_insecure(capsys):
    for extra in ([], ["--validate-config"]):
        assert cli.main(["--listen", "0.0.0.0:50051", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "configure tls" in err[0] and "--insecure" in err[0]
    assert cli.main(["--listen", "0.0.0.0:50051", "--insecure", "--validate-config"]) == 0
    assert cli.main(["--validate-config"]) == 0  # the default: loopback
    assert "listen: 127.0.0.1:50051" in capsys.readouterr().out


def test_plaintext_replacement_only_from_the_same_address(tmp_path, weights, encoder):
    """Without TLS anyone may claim camera C1: a stream from another address cannot take over the connected C1
    (ALREADY_EXISTS, retried by the node with backoff), one from the same address can (a reconnect)."""
    from mvic.fusion_server.errors import CameraInUseError
    from mvic.fusion_server.peer import Peer
    from mvic.fusion_server.status import status_for
    from mvic.shared.bitstream import FORMAT_VERSION
    from mvic.shared.rpc.hello import Hello

    srv = ServerThread(server_config(tmp_path / "out", weights)).start()
    try:
        old = MiniNode(srv.port, "C1", encoder)
        old.welcome()
        hello = Hello("C1", "", encoder.spec.model_id, encoder.weights_hash, FORMAT_VERSION, "test", 2)

        async def from_elsewhere():
            await srv.app.core.connect(hello, None, Peer("10.9.9.9"))

        with pytest.raises(CameraInUseError) as refused:
            srv.call(from_elsewhere)
        assert status_for(refused.value) == grpc.StatusCode.ALREADY_EXISTS
        new = MiniNode(srv.port, "C1", encoder)  # same address (127.0.0.1)
        new.welcome()
        assert old.refused().code() == grpc.StatusCode.ABORTED
        new.close()
        old.close()
    finally:
        srv.stop()


def test_an_insecure_public_bind_logs_a_warning(tmp_path, weights, caplog):
    with caplog.at_level(logging.WARNING, logger="mvic.fusion_server"):
        srv = ServerThread(server_config(tmp_path / "out", weights, listen="0.0.0.0:0", insecure=True)).start()
        srv.stop()
    assert any(r.levelno == logging.WARNING and r.getMessage().startswith("INSECURE: plaintext gRPC on 0.0.0.0:0")
               for r in caplog.records)


def test_bearer_tokens_on_top_of_the_certificate(tmp_path, weights, encoder, views, pki):
    """tls.tokens: a camera needs its certificate AND its own token; no token or another camera's is
    UNAUTHENTICATED, and the server logs neither."""
    ca, table = pki["ca"], pki["folder"] / "camera-tokens"
    table.write_text(f"C1 sha256:{token_digest('token-of-c1')}\nC2 sha256:{token_digest('token-of-c2')}\n")
    srv = tls_server(tmp_path, weights, replace(pki["tls"], tokens=str(table)))

    def with_token(camera, token):
        ssl_creds = creds(ca.pem, ca.camera(camera))
        if token is None:
            return ssl_creds
        return grpc.composite_channel_credentials(ssl_creds, grpc.access_token_call_credentials(token))

    try:
        node = MiniNode(srv.port, "C1", encoder, credentials=with_token("C1", "token-of-c1"))
        node.welcome()
        node.send(*_packet(views["C1"][0]))
        assert node.wait_acked(1)
        node.close()
        for camera, token in (("C2", None), ("C2", "token-of-c1"), ("C3", "token-of-c1")):
            refused = MiniNode(srv.port, camera, encoder, credentials=with_token(camera, token))
            err = refused.refused()
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (camera, token, err)
            assert "token-of" not in err.details()
            refused.close()
    finally:
        srv.stop()
