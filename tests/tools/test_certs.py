"""mvic-certs: the certificates parse, chain to their CA, and carry the names, usages, lifetimes and file modes the
mTLS links rely on; nothing is overwritten without --force."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from mvic.shared.identity import camera_identity, parse_camera_uri
from mvic.tools import certs


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _days(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - cert.not_valid_before_utc) / dt.timedelta(days=1)


@pytest.fixture()
def ca(tmp_path) -> Path:
    out = tmp_path / "ca"
    assert certs.main(["ca", "--out", str(out), "--trust-domain", "cams.example"]) == 0
    return out


def test_ca_is_a_p256_ca_of_ten_years_with_a_private_key_only_its_owner_reads(ca):
    cert = _cert(ca / "ca.crt")
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    assert 3650 <= _days(cert) <= 3651
    assert _mode(ca / "ca.key") == 0o600 and _mode(ca / "ca.crt") == 0o644 and _mode(ca) == 0o700


def test_server_certificate_names_what_cameras_dial_and_is_for_servers_only(ca, tmp_path, capsys):
    out = tmp_path / "server"
    assert certs.main(["server", "--ca", str(ca), "--out", str(out), "--dns", "fusion.lan", "--dns", "server",
                       "--ip", "10.0.0.5", "--ip", "::1"]) == 0
    cert = _cert(out / "server.crt")
    cert.verify_directly_issued_by(_cert(ca / "ca.crt"))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fusion.lan", "server"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("::1")]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert 365 <= _days(cert) <= 366
    assert _mode(out / "server.key") == 0o600 and _mode(out) == 0o700
    assert (out / "ca.crt").read_bytes() == (ca / "ca.crt").read_bytes()  # the folder is all the server needs
    printed = capsys.readouterr().out
    for name in ("server.crt", "server.key", "ca.crt"):
        assert str(out / name) in printed


def test_camera_certificate_holds_exactly_its_identity_uri(ca, tmp_path):
    out = tmp_path / "C1"
    assert certs.main(["camera", "--ca", str(ca), "--out", str(out), "--camera", "lobby east", "--group", "g/1",
                       "--days", "30"]) == 0
    cert = _cert(out / "lobby_east.crt")  # the file name is mvic.shared.fileio.safe_name of the id
    cert.verify_directly_issued_by(_cert(ca / "ca.crt"))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(san) == 1
    (uri,) = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert parse_camera_uri(uri) == camera_identity("cams.example", "g/1", "lobby east")
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert 30 <= _days(cert) <= 31
    assert _mode(out / "lobby_east.key") == 0o600


def test_default_group_round_trips_and_a_leaf_never_outlives_its_ca(tmp_path):
    ca = tmp_path / "ca"
    assert certs.main(["ca", "--out", str(ca), "--days", "10"]) == 0
    assert certs.main(["camera", "--ca", str(ca), "--out", str(tmp_path / "c"), "--camera", "C1"]) == 0
    cert = _cert(tmp_path / "c" / "C1.crt")
    (uri,) = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert parse_camera_uri(uri) == camera_identity(certs.DEFAULT_TRUST_DOMAIN, "", "C1")
    assert cert.not_valid_after_utc <= _cert(ca / "ca.crt").not_valid_after_utc


def test_nothing_is_overwritten_without_force(ca, tmp_path, capsys):
    out = tmp_path / "C1"
    args = ["camera", "--ca", str(ca), "--out", str(out), "--camera", "C1"]
    assert certs.main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert certs.main(args) == 2
    assert "already exist" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert certs.main(["ca", "--out", str(ca)]) == 2  # not even the CA
    assert certs.main(args + ["--force"]) == 0
    assert (out / "C1.crt").read_bytes() != before["C1.crt"] and _mode(out / "C1.key") == 0o600


@pytest.mark.parametrize("args", [
    ["server", "--out", "X"],                                    # no name to put in the certificate
    ["server", "--out", "X", "--ip", "300.1.1.1"],
    ["camera", "--out", "X", "--camera", "bad\nid"],
    ["camera", "--out", "X", "--camera", "C1", "--group", "_"],  # reserved for the default group
])
def test_bad_requests_are_refused_before_writing(ca, tmp_path, args):
    argv = [a.replace("X", str(tmp_path / "x")) for a in args] + ["--ca", str(ca)]
    assert certs.main(argv) == 2
    assert not (tmp_path / "x").exists()


def test_a_missing_ca_says_how_to_make_one(tmp_path, capsys):
    assert certs.main(["camera", "--ca", str(tmp_path / "none"), "--out", str(tmp_path / "c"), "--camera", "C1"]) == 2
    assert "mvic-certs ca --out" in capsys.readouterr().err


def test_bundle_makes_what_is_missing_and_keeps_the_rest(tmp_path):
    out = tmp_path / "tls"
    args = ["bundle", "--out", str(out), "--dns", "server", "--camera", "C1", "--token"]
    assert certs.main(args) == 0
    ca, server, c1 = _cert(out / "ca" / "ca.crt"), _cert(out / "server" / "server.crt"), _cert(out / "C1" / "C1.crt")
    server.verify_directly_issued_by(ca)
    c1.verify_directly_issued_by(ca)
    token = (out / "server" / "page-token").read_bytes()
    assert len(token.strip()) >= 32 and _mode(out / "server" / "page-token") == 0o600
    assert certs.main(args + ["--camera", "C2"]) == 0  # a second start: only the new camera is made
    assert _cert(out / "C1" / "C1.crt") == c1 and _cert(out / "ca" / "ca.crt") == ca
    assert (out / "server" / "page-token").read_bytes() == token
    _cert(out / "C2" / "C2.crt").verify_directly_issued_by(ca)
