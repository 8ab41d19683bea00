"""The registry's HTTPS (`registry/tls.py`, `registry/service.py`): the certificate loaded
before serving and reloaded in place when its files change (in memory, then as `fleetpulse
registry` serves it), HTTPS by default with the stack's certificate (and HSTS), no HTTP answer
to plain HTTP on its port, plain HTTP only when asked and then with a warning (and no HSTS),
and a missing or broken certificate as one line."""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from infra.settings import StackSettings
from infra.stack.process import free_port
from infra.stack.tls import issue
from registry.errors import TlsError
from registry.headers import POLICY
from registry.tls import ServingCertificate
from tests.conftest import ROOT
from tests.registry.harness import create_database, drop_database, trusting


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def _handshake(server_context: ssl.SSLContext, ca: Path) -> int:
    """A TLS handshake in memory with `server_context`, verified against `ca`; the serial of
    the certificate the server presented."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = trusting(ca).wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        finished = True
        for end in (client, server):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                finished = False
        s_in.write(c_out.read())  # each side's output is the other's input
        c_in.write(s_out.read())
        if finished:
            break
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _write_other_key(path: Path) -> None:
    """A new key in place of the old one, without its certificate: a rotation caught half-way
    (`issue` writes the key first)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(".other.key")
    tmp.write_bytes(pem)
    tmp.replace(path)


# -- the certificate, in memory ------------------------------------------------------------------
def test_the_certificate_is_reloaded_when_its_files_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tls = tmp_path / "tls"
    files = issue(tls, "registry")
    serving = ServingCertificate(files.cert, files.key)
    first = _serial(files.cert)
    assert _handshake(serving.context, tls / "ca.crt") == first
    assert serving.refresh() is False  # nothing changed

    # Half a rotation: the new key beside the old certificate. Logged once; the old pair serves.
    caplog.set_level(logging.INFO, logger="registry.tls")
    _write_other_key(files.key)
    assert serving.refresh() is False
    assert serving.refresh() is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "previous certificate keeps serving" in warnings[0]
    assert "(key values mismatch)" in warnings[0]
    assert _handshake(serving.context, tls / "ca.crt") == first

    # The whole rotation: the new certificate for the next connection.
    issue(tls, "registry", force=True)
    second = _serial(files.cert)
    assert second != first
    assert serving.refresh() is True
    assert _handshake(serving.context, tls / "ca.crt") == second
    assert f"reloaded the TLS certificate {files.cert} (serial {second:x}" in caplog.text


def test_a_missing_or_unusable_certificate_is_refused_by_name(tmp_path: Path) -> None:
    cert, key = tmp_path / "registry.crt", tmp_path / "registry.key"
    with pytest.raises(TlsError) as missing:
        ServingCertificate(cert, key)
    assert str(missing.value) == (
        f"no TLS certificate for the registry ({cert}, {key} missing): run `fleetpulse stack "
        "up`, which issues it from the stack's CA, or set FLEETPULSE_REGISTRY_TLS_CERT and "
        "FLEETPULSE_REGISTRY_TLS_KEY"
    )

    files = issue(tmp_path / "tls", "registry")
    _write_other_key(files.key)
    with pytest.raises(TlsError, match=r"with the certificate .* key values mismatch$"):
        ServingCertificate(files.cert, files.key)

    # An encrypted key is refused at once (OpenSSL would otherwise ask on the terminal).
    files = issue(tmp_path / "tls", "registry", force=True)
    loaded = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    files.key.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase-123"),
        )
    )
    with pytest.raises(TlsError, match="the key is encrypted; the registry takes an unencrypted"):
        ServingCertificate(files.cert, files.key)

    files.cert.write_text("not a certificate\n")
    with pytest.raises(TlsError, match="not a PEM certificate and key"):
        ServingCertificate(files.cert, files.key)


# -- `fleetpulse registry` ------------------------------------------------------------------------
@pytest.fixture
def database(stack_settings: StackSettings) -> Iterator[str]:
    name = create_database(stack_settings)
    yield name
    drop_database(stack_settings, name)


class Registry:
    """`fleetpulse registry` as a child process on a port of its own."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "FLEETPULSE_REGISTRY_PORT": str(self.port),
            "FLEETPULSE_REGISTRY_CONSUME_STATUS": "false",
            **env,
        }
        self.proc: subprocess.Popen[str] | None = None
        self.err = ""

    def __enter__(self) -> Registry:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "registry"],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self

    def wait_until_serving(self, base_url: str, verify: ssl.SSLContext | bool) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base_url + "/health", verify=verify, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        _, self.err = self.proc.communicate(timeout=30)


def _served_certificate(port: int, ca: Path, host: str = "127.0.0.1") -> x509.Certificate:
    """The certificate a new connection to `host:port` gets, verified against `ca`."""
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        trusting(ca).wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _plain_http_answer(port: int) -> bytes:
    """What the port sends back to a plain-HTTP request (until it closes or 5 s pass)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return got


@pytest.mark.integration
def test_https_by_default_with_the_stacks_certificate(
    stack_settings: StackSettings, database: str
) -> None:
    tls = stack_settings.home_dir / "tls"
    ca = tls / "ca.crt"
    assert (tls / "registry.crt").exists()  # issued by `stack up`
    with Registry({"FLEETPULSE_PG_DATABASE": database}) as registry:
        base = f"https://127.0.0.1:{registry.port}"
        registry.wait_until_serving(base, trusting(ca))
        served = _served_certificate(registry.port, ca)
        assert served.serial_number == _serial(tls / "registry.crt")
        r = httpx.get(base + "/health", verify=trusting(ca))
        assert r.headers["strict-transport-security"] == "max-age=31536000"
        assert r.headers["content-security-policy"] == POLICY
        assert (r.headers["x-content-type-options"], r.headers["x-frame-options"]) == (
            "nosniff",
            "DENY",
        )
        assert r.headers["referrer-policy"] == "no-referrer"
        # The host name is checked too: `localhost` is one of the certificate's names.
        r = httpx.get(f"https://localhost:{registry.port}/health", verify=trusting(ca))
        assert r.status_code == 200

        # Plain HTTP to the HTTPS port: the handshake fails, no HTTP answer, no data.
        answer = _plain_http_answer(registry.port)
        assert not answer.startswith(b"HTTP/") and b"status" not in answer, answer
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{registry.port}/health", timeout=5)
        # Nor does a client that does not trust the stack's CA get through.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(base + "/health", timeout=5)
        assert registry.proc is not None and registry.proc.poll() is None
    assert registry.proc.returncode == 0, registry.err
    assert f"registry on https://127.0.0.1:{registry.port}" in registry.err
    assert f"certificate {tls / 'registry.crt'} (serial" in registry.err
    assert "Traceback" not in registry.err


@pytest.mark.integration
def test_a_rotated_certificate_serves_new_connections_without_a_restart(
    stack_settings: StackSettings, database: str, tmp_path: Path
) -> None:
    tls = tmp_path / "tls"
    files = issue(tls, "registry")
    ca = tls / "ca.crt"
    first = _serial(files.cert)
    env = {
        "FLEETPULSE_PG_DATABASE": database,
        "FLEETPULSE_REGISTRY_TLS_CERT": str(files.cert),
        "FLEETPULSE_REGISTRY_TLS_KEY": str(files.key),
    }
    with Registry(env) as registry, httpx.Client(verify=trusting(ca), timeout=10) as kept:
        base = f"https://localhost:{registry.port}"
        registry.wait_until_serving(base, trusting(ca))
        assert kept.get(base + "/health").status_code == 200  # a connection kept open
        assert _served_certificate(registry.port, ca).serial_number == first

        # Half a rotation: new connections keep getting the old certificate.
        _write_other_key(files.key)
        time.sleep(2.5)  # the files are looked at once a second
        assert _served_certificate(registry.port, ca).serial_number == first

        issue(tls, "registry", force=True)
        second = _serial(files.cert)
        deadline = time.monotonic() + 15
        while (served := _served_certificate(registry.port, ca).serial_number) != second:
            assert served == first
            assert time.monotonic() < deadline, "the new certificate was not picked up"
            time.sleep(0.2)
        assert httpx.get(base + "/health", verify=trusting(ca)).status_code == 200
        assert kept.get(base + "/health").status_code == 200  # the open connection goes on
    assert registry.proc is not None and registry.proc.returncode == 0, registry.err
    assert registry.err.count("does not load (key values mismatch)") == 1, registry.err
    assert f"reloaded the TLS certificate {files.cert} (serial {second:x}" in registry.err


@pytest.mark.integration
def test_plain_http_only_when_asked_and_with_a_warning(
    stack_settings: StackSettings, database: str
) -> None:
    env = {"FLEETPULSE_PG_DATABASE": database, "FLEETPULSE_REGISTRY_PLAIN_HTTP": "true"}
    with Registry(env) as registry:
        base = f"http://127.0.0.1:{registry.port}"
        registry.wait_until_serving(base, verify=False)
        r = httpx.get(base + "/health")
        assert r.status_code == 200
        assert "strict-transport-security" not in r.headers  # not over plain HTTP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-security-policy"] == POLICY
    assert registry.proc is not None and registry.proc.returncode == 0, registry.err
    warnings = [line for line in registry.err.splitlines() if " WARNING " in line]
    (warning,) = [line for line in warnings if "plain HTTP" in line]
    assert "FLEETPULSE_REGISTRY_PLAIN_HTTP" in warning and "readable" in warning
    assert f"registry on http://127.0.0.1:{registry.port}" in registry.err


def _serve_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`fleetpulse registry` expected to stop by itself."""
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "registry"],
        env={**os.environ, "FLEETPULSE_REGISTRY_PORT": str(free_port()), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.integration
def test_a_missing_or_broken_certificate_is_one_line(tmp_path: Path) -> None:
    # A home without TLS files: the registry says what to do before it tries the database.
    home = tmp_path / "home"
    done = _serve_once({"FLEETPULSE_HOME": str(home)})
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    cert, key = home / "tls" / "registry.crt", home / "tls" / "registry.key"
    assert line == (
        f"fleetpulse: error: no TLS certificate for the registry ({cert}, {key} missing): run "
        "`fleetpulse stack up`, which issues it from the stack's CA, or set "
        "FLEETPULSE_REGISTRY_TLS_CERT and FLEETPULSE_REGISTRY_TLS_KEY"
    )
    assert not (home / "secrets").exists()  # nothing made before the refusal

    files = issue(tmp_path / "tls", "registry")
    files.cert.write_text("not a certificate\n")
    done = _serve_once(
        {
            "FLEETPULSE_REGISTRY_TLS_CERT": str(files.cert),
            "FLEETPULSE_REGISTRY_TLS_KEY": str(files.key),
        }
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line == (
        f"fleetpulse: error: cannot serve HTTPS with the certificate {files.cert} and the key "
        f"{files.key}: not a PEM certificate and key"
    )
