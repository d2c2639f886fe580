"""Real certificates for the TLS tests, made with ``cryptography``: a CA, a server certificate for localhost /
127.0.0.1, camera certificates carrying the MVIC URI SAN (``mvic.shared.identity``), written as PEM files."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mvic.shared.identity import camera_identity

DOMAIN = "mvic.test"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Issued:
    cert: bytes  # PEM
    key: bytes  # PEM
    serial: int

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        """name.crt, name.key in folder (replaced atomically, as a rotation tool does)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = folder / f"{name}.crt", folder / f"{name}.key"
        for path, data in zip(paths, (self.cert, self.key), strict=True):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return paths


class CA:
    def __init__(self, name: str = "MVIC test CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.name = _name(name)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, folder: Path, name: str = "ca") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.crt"
        path.write_bytes(self.pem)
        return path

    def _issue(self, cn: str, sans: list[x509.GeneralName], usage, *, expired: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start, end = (now - dt.timedelta(days=10), now - dt.timedelta(days=1)) if expired else \
            (now - dt.timedelta(hours=1), now + dt.timedelta(days=7))
        serial = x509.random_serial_number()
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.name)
                .public_key(key.public_key()).serial_number(serial).not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), serial)

    def server(self, cn: str = "mvic-server") -> Issued:
        return self._issue(cn, [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                           ExtendedKeyUsageOID.SERVER_AUTH)

    def camera(self, camera: str, group: str = "", domain: str = DOMAIN, *, expired: bool = False) -> Issued:
        uri = camera_identity(domain, group, camera).uri()
        return self._issue(f"camera {camera}", [x509.UniformResourceIdentifier(uri)], ExtendedKeyUsageOID.CLIENT_AUTH,
                           expired=expired)
