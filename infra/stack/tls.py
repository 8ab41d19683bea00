"""The local stack's private CA and the certificates it issues, made with `cryptography`.

Everything lives in `<home>/tls/`: `ca.crt` (what clients trust) and `ca.key`, then one
certificate and key per server, each naming `localhost`, `127.0.0.1` and `::1`:

- `server.crt` for PostgreSQL (clients verify it with `sslmode=verify-full`);
- `kafka.crt` for the broker: its client listener, and as its own identity (`kafka-broker`)
  on the mutual-TLS controller and inter-broker listeners, so it may also authenticate clients;
- `registry.crt` for the registry's HTTPS.

Keys are written mode 0600. `issue(..., force=True)` re-issues one from the same CA
(`fleetpulse stack rotate-certs`); clients keep trusting `ca.crt`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_DAYS = 825
#: Common names of the issued certificates (the broker's is its principal on mTLS listeners).
COMMON_NAMES = {"server": "localhost", "kafka": "kafka-broker", "registry": "localhost"}
#: Certificates that also serve as a client identity.
_CLIENT_AUTH = frozenset({"kafka"})


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def under(cls, directory: Path) -> TlsFiles:
        return cls(
            ca_cert=directory / "ca.crt",
            ca_key=directory / "ca.key",
            server_cert=directory / "server.crt",
            server_key=directory / "server.key",
        )

    def exist(self) -> bool:
        return all(
            p.exists() for p in (self.ca_cert, self.ca_key, self.server_cert, self.server_key)
        )


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA, created once."""
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FleetPulse local CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def issue(
    directory: Path,
    name: str,
    *,
    hostnames: tuple[str, ...] = ("localhost",),
    force: bool = False,
) -> Certificate:
    """`<name>.crt` and `<name>.key` signed by the CA in `directory` (made first if missing).
    Kept when they exist and name every one of `hostnames`, unless `force` (a rotation)."""
    files = Certificate(directory / f"{name}.crt", directory / f"{name}.key")
    kept = files.cert.exists() and files.key.exists() and not force
    if kept and names_covered(files.cert, hostnames):
        return files
    ca_cert, ca_key = _ca(directory)
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names = _alt_names(hostnames)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if name in _CLIENT_AUTH:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    common_name = COMMON_NAMES.get(name, hostnames[0])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    # Key first: a certificate next to an older key would not load.
    _write_private(files.key, _key_pem(key))
    _write_public(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


def _alt_names(hostnames: tuple[str, ...]) -> list[x509.GeneralName]:
    """DNS names and IP addresses of `hostnames`, and always the loopback addresses."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys((*hostnames, "127.0.0.1", "::1")):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def names_covered(cert_path: Path, hostnames: tuple[str, ...]) -> bool:
    """Whether the certificate at `cert_path` names every one of `hostnames`."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        present = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return False
    return all(name in present for name in _alt_names(hostnames))


def ensure_certificates(directory: Path, hostnames: tuple[str, ...] = ("localhost",)) -> TlsFiles:
    """The CA and PostgreSQL's server certificate, created once; later calls keep what
    exists."""
    files = TlsFiles.under(directory)
    if not files.exist():
        issue(directory, "server", hostnames=hostnames)
    return files
