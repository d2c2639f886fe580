"""``mvic-certs``: the certificates of the mTLS camera links (a private CA, the server's, one per camera).

    mvic-certs ca     --out certs/ca [--trust-domain mvic.local]                  # ca.crt, ca.key (keep it offline)
    mvic-certs server --ca certs/ca --out certs/server --dns fusion.lan --ip 10.0.0.5
    mvic-certs camera --ca certs/ca --out certs/C1 --camera C1 [--group lobby]
    mvic-certs bundle --out /tls --dns server --camera C1 --camera C2 --token   # all of it, what is missing only
    mvic-certs token  --out certs/C1 --camera C1 --tokens certs/server/camera-tokens   # optional bearer token

Every key is EC P-256. The CA lives ``--days`` (default 10 years), a leaf 1 year by default and never past its CA.
The server certificate carries the DNS and IP names the cameras dial (subjectAltName) and the serverAuth usage; a
camera certificate carries exactly one URI SAN, the camera's identity ``mvic.shared.identity`` defines
(``spiffe://<trust-domain>/group/<group>/camera/<camera>``; the trust domain is the CA's, kept in its subject's O,
which the server's ``tls.trust_domain`` must name),
and the clientAuth usage. The server compares that identity with the camera and group of each stream's Hello.

Private keys are written 0600 in a folder made 0700; certificates 0644. Each leaf folder also gets a copy of
``ca.crt``, so that one folder is all one machine needs. Nothing is overwritten without ``--force``: a second run
with the same ``--out`` stops before writing anything; ``bundle`` (the compose demo's one-off ``certs`` service) makes
``ca/``, ``server/`` (with ``probe.crt``: a client certificate without a camera identity, for the health check of
the mTLS port), one folder per camera and the live page's token ``server/page-token``, and keeps whatever of them
already exists, so it can run at every start. ``token`` (optional, on top of the certificates: issue 14) writes a
random bearer token to ``<out>/token`` (0600, for the node's ``tls.token_file``) and its SHA-256 line into the
server's ``tls.tokens`` file (the server never holds the token itself); ``--force`` replaces a camera's token.
Exit status: 0 written, 2 refused (a file exists, a bad
name, a CA that cannot be read).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mvic.fusion_server.tokens import parse_tokens, token_digest
from mvic.shared.errors import IdError
from mvic.shared.fileio import safe_name, write_atomic
from mvic.shared.identity import DEFAULT_TRUST_DOMAIN, camera_identity
from mvic.shared.ids import validate_camera_id

PROG = "mvic-certs"
EXIT_OK, EXIT_REFUSED = 0, 2
CA_DAYS, LEAF_DAYS = 3650, 365
CA_CERT, CA_KEY = "ca.crt", "ca.key"
BACKDATE = dt.timedelta(minutes=5)  # a verifier whose clock is a little behind still accepts a fresh certificate
KEY_MODE, CERT_MODE, DIR_MODE = 0o600, 0o644, 0o700


class CertError(Exception):
    """A request mvic-certs refuses (exit 2); the message says what to change."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="exit status: 0 written; 2 refused (existing files without --force, a bad "
                                       "name, a CA that cannot be read)")
    sub = p.add_subparsers(dest="kind", required=True, metavar="{ca,server,camera,bundle,token}")

    def common(q: argparse.ArgumentParser, days: int) -> None:
        q.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write (made 0700)")
        q.add_argument("--days", type=int, default=days, help=f"lifetime in days (default {days})")
        q.add_argument("--force", action="store_true", help="overwrite files that exist")

    ca = sub.add_parser("ca", help="a new certificate authority: ca.crt and ca.key")
    common(ca, CA_DAYS)
    ca.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN,
                    help=f"the domain of every camera identity it signs (default {DEFAULT_TRUST_DOMAIN})")
    server = sub.add_parser("server", help="the fusion server's certificate: server.crt, server.key")
    common(server, LEAF_DAYS)
    server.add_argument("--ca", required=True, type=Path, metavar="DIR", help="folder holding ca.crt and ca.key")
    server.add_argument("--dns", action="append", default=[], metavar="NAME",
                        help="a host name the cameras dial (repeat)")
    server.add_argument("--ip", action="append", default=[], metavar="ADDR",
                        help="an address the cameras dial (repeat)")
    camera = sub.add_parser("camera", help="one camera's client certificate: <camera>.crt, <camera>.key")
    common(camera, LEAF_DAYS)
    camera.add_argument("--ca", required=True, type=Path, metavar="DIR", help="folder holding ca.crt and ca.key")
    camera.add_argument("--camera", required=True, metavar="ID", help="the camera id (its --camera / camera:)")
    camera.add_argument("--group", default="", metavar="G", help="its camera group (default: the default group)")
    token = sub.add_parser("token", help="a camera's bearer token: <out>/token, and its hash in the server's "
                                         "tls.tokens file")
    token.add_argument("--out", required=True, type=Path, metavar="DIR", help="the camera's folder (made 0700)")
    token.add_argument("--camera", required=True, metavar="ID", help="the camera id (its --camera / camera:)")
    token.add_argument("--tokens", required=True, type=Path, metavar="FILE",
                       help="the server's tls.tokens file: the camera's line is added (or replaced with --force)")
    token.add_argument("--force", action="store_true", help="replace the camera's token")
    token.set_defaults(days=1)
    bundle = sub.add_parser("bundle", help="CA, server, cameras and live page token under one folder; keeps what "
                                           "exists (ca/, server/, <camera>/)")
    bundle.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to fill")
    bundle.add_argument("--days", type=int, default=LEAF_DAYS, help=f"leaf lifetime in days (default {LEAF_DAYS})")
    bundle.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN, help="of a new CA")
    bundle.add_argument("--dns", action="append", default=[], metavar="NAME", help="server name (repeat)")
    bundle.add_argument("--ip", action="append", default=[], metavar="ADDR", help="server address (repeat)")
    bundle.add_argument("--camera", action="append", default=[], metavar="ID", help="a camera (repeat)")
    bundle.add_argument("--group", default="", metavar="G", help="the cameras' group")
    bundle.add_argument("--token", action="store_true", help="also a random live page token: server/page-token")
    bundle.add_argument("--owner", metavar="UID[:GID]",
                        help="hand server/ and the camera folders to this user (a container's non-root user)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 1 <= args.days <= 100 * 365:
            raise CertError(f"--days {args.days} must be 1..{100 * 365}")
        files = {"ca": make_ca, "server": make_server, "camera": make_camera, "bundle": make_bundle,
                 "token": make_token}[args.kind](args)
    except CertError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    for path, mode in files:
        print(f"wrote {path} ({mode:04o})")
    if args.kind != "bundle":
        print(_usage(args))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ commands
def make_ca(args: argparse.Namespace) -> list[tuple[Path, int]]:
    try:
        camera_identity(args.trust_domain, "", "probe")  # the trust domain rule lives in mvic.shared.identity
    except IdError as exc:
        raise CertError(str(exc)) from None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"MVIC CA {args.trust_domain}"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, args.trust_domain)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=args.days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _write(args.out, args.force, [(CA_CERT, _pem(cert), CERT_MODE), (CA_KEY, _key_pem(key), KEY_MODE)])


def make_server(args: argparse.Namespace) -> list[tuple[Path, int]]:
    if not args.dns and not args.ip:
        raise CertError("give at least one --dns NAME or --ip ADDR: the names the cameras dial")
    try:
        ips = [ipaddress.ip_address(a) for a in args.ip]
    except ValueError as exc:
        raise CertError(f"--ip: {exc}") from None
    for name in args.dns:
        if not name or not all(c.isalnum() or c in ".-*" for c in name):
            raise CertError(f"--dns {name!r} is not a host name")
    sans = [x509.DNSName(n) for n in args.dns] + [x509.IPAddress(a) for a in ips]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (args.dns or args.ip)[0])])
    return _leaf(args, "server", subject, sans, ExtendedKeyUsageOID.SERVER_AUTH)


def make_camera(args: argparse.Namespace) -> list[tuple[Path, int]]:
    try:
        identity = camera_identity(_trust_domain(args.ca), args.group, args.camera)
    except IdError as exc:
        raise CertError(str(exc)) from None
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, args.camera),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.trust_domain)])
    return _leaf(args, safe_name(args.camera), subject, [x509.UniformResourceIdentifier(identity.uri())],
                 ExtendedKeyUsageOID.CLIENT_AUTH)


def make_bundle(args: argparse.Namespace) -> list[tuple[Path, int]]:
    """What is missing of ca/, server/, <camera>/ and server/page-token; existing parts are kept as they are."""
    out, written = args.out, []
    ca, server = out / "ca", out / "server"
    common = {"days": args.days, "force": False, "ca": ca}
    if not (ca / CA_CERT).exists():
        written += make_ca(argparse.Namespace(kind="ca", out=ca, days=CA_DAYS, force=False,
                                              trust_domain=args.trust_domain))
    if not (server / "server.crt").exists():
        written += make_server(argparse.Namespace(kind="server", out=server, dns=args.dns, ip=args.ip, **common))
    folders = [server]
    for camera in args.camera:
        folder = out / safe_name(camera)
        folders.append(folder)
        if not (folder / f"{safe_name(camera)}.crt").exists():
            written += make_camera(argparse.Namespace(kind="camera", out=folder, camera=camera, group=args.group,
                                                      **common))
    if not (server / "probe.crt").exists():
        # the server's health check dials its own mTLS port: a client certificate with no camera identity, so the
        # server takes no frames from it
        written += _leaf(argparse.Namespace(out=server, **common), "probe",
                         x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mvic-grpc-health")]), [],
                         ExtendedKeyUsageOID.CLIENT_AUTH)
    if args.token and not (server / "page-token").exists():
        token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=") + b"\n"
        written += _write(server, False, [("page-token", token, KEY_MODE)])
    kept = [f for f in [ca, *folders] if not any(path.parent == f for path, _ in written)]
    if kept:
        print(f"kept {', '.join(map(str, kept))} (made before)")
    if args.owner:
        uid, _, gid = args.owner.partition(":")
        for folder in folders:
            for path in [folder, *folder.iterdir()]:
                os.chown(path, int(uid), int(gid or uid))
    return written


def make_token(args: argparse.Namespace) -> list[tuple[Path, int]]:
    """<out>/token and the camera's line in the server's tokens file (the file is rewritten atomically)."""
    try:
        validate_camera_id(args.camera)
    except IdError as exc:
        raise CertError(str(exc)) from None
    try:
        table = parse_tokens(args.tokens.read_text()) if args.tokens.exists() else {}
    except (OSError, ValueError) as exc:
        raise CertError(f"{args.tokens}: {exc}; fix or remove that file") from None
    if args.camera in table and not args.force:
        raise CertError(f"{args.tokens} already holds a token of camera {args.camera}; nothing was written (--force "
                        "issues a new one: update the node's token file too)")
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    written = _write(args.out, args.force, [("token", (token + "\n").encode(), KEY_MODE)])
    table[args.camera] = token_digest(token)
    lines = "".join(f"{camera} sha256:{digest}\n" for camera, digest in sorted(table.items()))
    write_atomic(args.tokens, ("# camera bearer tokens (SHA-256), made by mvic-certs token\n" + lines).encode())
    args.tokens.chmod(CERT_MODE)
    return [*written, (args.tokens, CERT_MODE)]


def _leaf(args: argparse.Namespace, stem: str, subject: x509.Name, sans: list[x509.GeneralName],
          usage: x509.ObjectIdentifier) -> list[tuple[Path, int]]:
    ca_cert, ca_key = _load_ca(args.ca)
    now = _now()
    end = min(now + dt.timedelta(days=args.days), ca_cert.not_valid_after_utc)  # never outlives its CA
    if end <= now:
        raise CertError(f"the CA in {args.ca} has expired; make a new one with mvic-certs ca")
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - BACKDATE).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(cert_sign=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if sans:  # every leaf but the health probe's, which names no one
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _write(args.out, args.force, [(f"{stem}.crt", _pem(cert), CERT_MODE),
                                         (f"{stem}.key", _key_pem(key), KEY_MODE),
                                         (CA_CERT, _pem(ca_cert), CERT_MODE)])


# ---------------------------------------------------------------------------------------------------- files
def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CertError(f"cannot read the CA in {folder} ({exc}); make one with: {PROG} ca --out {folder}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertError(f"{folder / CA_KEY} is not the key of {folder / CA_CERT}")
    return cert, key


def _trust_domain(ca: Path) -> str:
    """The trust domain ``mvic-certs ca`` wrote into the CA's subject (O)."""
    domains = _load_ca(ca)[0].subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not domains:
        raise CertError(f"{ca / CA_CERT} names no trust domain (subject O); make the CA with {PROG} ca")
    return str(domains[0].value)


def _write(folder: Path, force: bool, files: list[tuple[str, bytes, int]]) -> list[tuple[Path, int]]:
    """Write every file or none: existing ones stop the run before anything is written (a copy of ca.crt that is
    already there unchanged is kept)."""
    todo = [(folder / name, data, mode) for name, data, mode in files
            if not (name == CA_CERT and mode == CERT_MODE and _same(folder / name, data) and not force)]
    existing = [str(path) for path, _, _ in todo if path.exists() or path.is_symlink()]
    if existing and not force:
        raise CertError(f"{', '.join(existing)} already exist(s); nothing was written (--force replaces them)")
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if folder.stat().st_uid == os.geteuid():
        folder.chmod(DIR_MODE)  # an existing folder too: it holds a private key
    for path, data, mode in todo:
        path.unlink(missing_ok=True)
        # O_EXCL after the unlink: the key is never readable by others, not even for a moment, and a link planted
        # at its name is not followed.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        path.chmod(mode)  # whatever the umask
    return [(path, mode) for path, _, mode in todo]


def _same(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def _usage(args: argparse.Namespace) -> str:
    out = args.out
    if args.kind == "ca":
        return (f"CA for trust domain {args.trust_domain}: keep {out / CA_KEY} off the cameras and the server. "
                f"Next: {PROG} server --ca {out} --out DIR --dns NAME, then {PROG} camera --ca {out} --out DIR "
                "--camera ID for each camera.")
    if args.kind == "server":
        return (f"mvic-server --tls-cert {out / 'server.crt'} --tls-key {out / 'server.key'} "
                f"--tls-client-ca {out / CA_CERT} --set tls.trust_domain={_trust_domain(args.ca)}")
    if args.kind == "token":
        return (f"mvic-node ... --tls-token-file {args.out / 'token'}; mvic-server ... --tls-tokens {args.tokens} "
                "(it re-reads the file when it changes)")
    stem = safe_name(args.camera)
    return (f"mvic-node --camera {args.camera} --tls-cert {out / (stem + '.crt')} --tls-key {out / (stem + '.key')} "
            f"--tls-ca {out / CA_CERT}")


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=not cert_sign, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


if __name__ == "__main__":
    sys.exit(main())
