"""Who a stream's peer is, without sockets: the camera identity of a certificate, the identity check, the
replacement rule, the revocation list and its reload."""

from __future__ import annotations

import logging

import pytest

from mvic.fusion_server.errors import CameraInUseError, IdentityError, RevokedError
from mvic.fusion_server.peer import Peer, Revocations, check_identity, may_replace, parse_certificate, peer_from
from tests.pki import CA, DOMAIN


@pytest.fixture(scope="module")
def ca():
    return CA()


def test_the_identity_is_the_one_uri_san(ca):
    cert = parse_certificate(ca.camera("lobby east", "plaza").cert)
    assert (cert.identity.trust_domain, cert.identity.group_id, cert.identity.camera_id) == (DOMAIN, "plaza",
                                                                                             "lobby east")
    assert cert.subject == "CN=camera lobby east" and int(cert.serial, 16) > 0
    check_identity(Peer("10.0.0.1", cert), "lobby east", "plaza", DOMAIN)


def test_a_certificate_without_a_camera_uri_proves_nothing(ca):
    server = parse_certificate(ca.server().cert)  # DNS and IP SANs only
    assert server.identity is None and "0 URI SANs" in server.problem
    with pytest.raises(IdentityError, match="names no camera"):
        check_identity(Peer("10.0.0.1", server), "C1", "", DOMAIN)
    with pytest.raises(IdentityError, match="requires a client certificate"):
        check_identity(Peer("10.0.0.1"), "C1", "", DOMAIN)


def test_peer_from_reads_the_pem_of_the_auth_context(ca):
    issued = ca.camera("C1")
    peer = peer_from("10.0.0.1", {"x509_pem_cert": [issued.cert], "transport_security_type": [b"ssl"]})
    assert peer.certificate.serial == format(issued.serial, "x") and peer.certificate.identity.camera_id == "C1"
    assert peer_from("10.0.0.1", {}).certificate is None
    assert "serial" in peer.describe() and peer_from("10.0.0.1", None).describe() == "'10.0.0.1'"


def test_replacement_needs_a_certificate_or_the_same_address(ca):
    proven = Peer("10.0.0.9", parse_certificate(ca.camera("C1").cert))
    may_replace(None, Peer("10.0.0.9"), "C1")
    may_replace(Peer("10.0.0.1"), Peer("10.0.0.1"), "C1")
    may_replace(Peer("10.0.0.1", proven.certificate), proven, "C1")
    with pytest.raises(CameraInUseError, match="another address"):
        may_replace(Peer("10.0.0.1"), Peer("10.0.0.2"), "C1")


def test_revocations_reload_on_change_and_keep_the_last_good_list(tmp_path, ca, caplog):
    now = [0.0]
    path = tmp_path / "revoked.txt"
    path.write_text("# nothing yet\n")
    revocations = Revocations(str(path), interval_s=1.0, clock=lambda: now[0])
    issued = ca.camera("C1")
    peer = Peer("10.0.0.1", parse_certificate(issued.cert))
    revocations.check(peer, "C1")
    hex_serial = format(issued.serial, "X").zfill(40)
    path.write_text(f"0x{hex_serial}   # leaked\n")
    revocations.check(peer, "C1")  # not looked at again yet
    now[0] = 2.0
    with pytest.raises(RevokedError, match="certificate serial"):
        revocations.check(peer, "C1")
    path.write_text("C2\n")
    now[0] = 4.0
    revocations.check(peer, "C1")
    with pytest.raises(RevokedError, match="camera 'C2'"):
        revocations.check(None, "C2")
    path.unlink()
    now[0] = 6.0
    with caplog.at_level(logging.ERROR, logger="mvic.fusion_server.peer"):
        with pytest.raises(RevokedError):  # unreadable: the last list stays
            revocations.check(None, "C2")
    assert "keeping the last one read" in caplog.text


def test_tls_config_is_all_or_nothing(tmp_path):
    from mvic.fusion_server.config import ConfigError, load_config

    cert = tmp_path / "server.crt"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="^tls: give all"):
        load_config(overrides={"tls.cert": str(cert)})
    with pytest.raises(ConfigError, match="^tls.client_ca: .* is not a file"):
        load_config(overrides={"tls.cert": str(cert), "tls.key": str(cert), "tls.client_ca": str(tmp_path / "no")})
    with pytest.raises(ConfigError, match="^tls.trust_domain"):
        load_config(overrides={"tls.trust_domain": "Not A Domain"})
    with pytest.raises(ConfigError, match="^tls.revoked: revocation needs tls"):
        load_config(overrides={"tls.revoked": str(cert)})
    config = load_config(overrides={"tls.cert": str(cert), "tls.key": str(cert), "tls.client_ca": str(cert),
                                    "listen": "0.0.0.0:50051"})
    assert config.tls.enabled and not config.insecure  # with tls any address may be served
