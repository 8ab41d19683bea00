"""The generated CA and server certificate verify as a TLS client would check them."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

from cryptography import x509

from infra.stack.tls import ensure_certificates


def test_certificates_chain_and_names(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.ca_key.stat().st_mode) == 0o600
    # The CA loads into a verifying client context, as sslmode=verify-full uses it.
    ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_existing_certificates_are_kept(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path).ca_cert.read_bytes()
    assert ensure_certificates(tmp_path).ca_cert.read_bytes() == first
