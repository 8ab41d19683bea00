"""Integration: the stack's lifecycle on a stack of its own (own folder, own ports).

Two `fleetpulse stack up` at once leave exactly one broker and one database; `status` says
what runs; `down` leaves no process behind. `up` issues the registry's certificate once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from cryptography import x509

from infra import stack
from infra.settings import StackSettings
from runtime import kafka
from schemas.topics import TopicSpec
from tests.conftest import ROOT
from tests.kafka import read_all

pytestmark = pytest.mark.integration


def _fleetpulse(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def _ours(home: Path) -> list[psutil.Process]:
    """Processes whose command line names this stack's folder (broker and postmaster)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(home) in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_up_twice_down_leaves_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = ROOT / ".fleetpulse" / f"test-lifecycle-{os.getpid()}"
    # Ports below the kernel's ephemeral range (32768+): a client socket of another test may
    # hold a port in that range for a moment, and a broker bind to it would fail.
    env = {
        **os.environ,
        "FLEETPULSE_HOME": str(home),
        "FLEETPULSE_KAFKA_BOOTSTRAP": "127.0.0.1:28092",
        "FLEETPULSE_KAFKA_CONTROLLER_PORT": "28093",
        "FLEETPULSE_KAFKA_INTERNAL_PORT": "28096",
        "FLEETPULSE_KAFKA_PROXIED_PORT": "28094",
        "FLEETPULSE_KAFKA_PROXY_PORT": "28095",
        "FLEETPULSE_PG_PORT": "25452",
    }
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: _fleetpulse(env, "stack", "up"), range(2)))
        for r in results:
            assert r.returncode == 0, r.stderr
        outputs = "".join(r.stdout for r in results)
        # Exactly one of the two calls started each component.
        assert outputs.count("kafka     started") == 1, outputs
        assert outputs.count("postgres  started") == 1, outputs
        procs = _ours(home)
        kinds = sorted("kafka" if "kafka.Kafka" in " ".join(p.cmdline()) else "pg" for p in procs)
        assert kinds == ["kafka", "pg"], [p.cmdline() for p in procs]

        again = _fleetpulse(env, "stack", "up")
        assert again.returncode == 0 and again.stdout.count("already running") == 2
        assert sorted(p.pid for p in _ours(home)) == sorted(p.pid for p in procs)

        status = _fleetpulse(env, "stack", "status")
        assert status.returncode == 0
        assert "127.0.0.1:28092" in status.stdout and "127.0.0.1:25452" in status.stdout

        family = [c for p in procs for c in p.children(recursive=True)] + procs
        down = _fleetpulse(env, "stack", "down")
        assert down.returncode == 0, down.stderr
        assert down.stdout.count("stopped") == 2
        assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert _ours(home) == []

        stopped = _fleetpulse(env, "stack", "status")
        assert stopped.returncode == 3 and stopped.stdout.count("stopped") == 2
        assert _fleetpulse(env, "stack", "down").stdout.count("was not running") == 2
    finally:
        _fleetpulse(env, "stack", "down")
        subprocess.run(["rm", "-rf", str(home)], check=False)


def test_port_taken_by_a_stranger_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {
            **os.environ,
            "FLEETPULSE_HOME": str(tmp_path / "home"),
            "FLEETPULSE_PG_PORT": str(port),
        }
        r = _fleetpulse(env, "stack", "up")
    assert r.returncode == 1
    assert f"port 127.0.0.1:{port} is taken" in r.stderr
    assert "Traceback" not in r.stderr


def test_up_issues_the_registry_certificate_when_it_is_missing(
    stack_settings: StackSettings,
) -> None:
    tls = stack_settings.home_dir / "tls"
    cert, key = tls / "registry.crt", tls / "registry.key"
    issued = x509.load_pem_x509_certificate(cert.read_bytes())  # by the session's `stack up`
    issued.verify_directly_issued_by(x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes()))
    names = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert key.stat().st_mode & 0o777 == 0o600

    stack.up(stack_settings)  # everything running: the certificate is kept
    assert x509.load_pem_x509_certificate(cert.read_bytes()) == issued
    cert.unlink()
    stack.up(stack_settings)  # missing: issued again, from the same CA
    again = x509.load_pem_x509_certificate(cert.read_bytes())
    assert again.serial_number != issued.serial_number and again.issuer == issued.issuer


def _serial(host: str, port: int, ca: Path, *, starttls_postgres: bool = False) -> int:
    """The serial number of the certificate the server at host:port presents."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, port), timeout=10) as raw:
        if starttls_postgres:  # PostgreSQL's SSLRequest, then TLS on the same connection
            raw.sendall(struct.pack("!ii", 8, 80877103))
            assert raw.recv(1) == b"S"
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_rotate_certs_reissues_every_certificate_and_loses_no_record(
    stack_settings: StackSettings, new_topic: TopicSpec
) -> None:
    s = stack_settings
    ca = s.home_dir / "tls" / "ca.crt"
    kafka_before = _serial(s.kafka_host, s.kafka_port, ca)
    pg_before = _serial(s.pg_host, s.pg_port, ca, starttls_postgres=True)
    registry_cert = s.home_dir / "tls" / "registry.crt"
    registry_before = registry_cert.read_bytes() if registry_cert.exists() else b""

    # Long enough to wait out the broker's restart on a loaded machine.
    producer = kafka.producer(s.model_copy(update={"kafka_request_timeout_ms": 120_000}), "r")
    await producer.start()
    sent = 0
    rotation = asyncio.create_task(asyncio.to_thread(stack.rotate_certs, s))
    try:
        while not rotation.done() or sent < 50:
            await producer.send_and_wait(new_topic.name, str(sent).encode(), key=b"k")
            sent += 1
            await asyncio.sleep(0.02)
        done = await rotation
    finally:
        await producer.stop()

    assert len(done) == 3 and "broker restarted" in done[0] and "server reloaded" in done[1]
    assert _serial(s.kafka_host, s.kafka_port, ca) != kafka_before
    assert _serial(s.pg_host, s.pg_port, ca, starttls_postgres=True) != pg_before
    assert registry_cert.read_bytes() != registry_before
    got = await read_all(s.kafka_bootstrap, new_topic.name, sent)
    assert sorted(int(v) for _, v in got) == list(range(sent))
