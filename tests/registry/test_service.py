"""Integration: `fleetpulse registry`, `registry create-admin` and `registry rotate-key` as an
operator runs them: HTTPS serving, a generated key file, rotation in one transaction."""

from __future__ import annotations

import os
import signal
import ssl
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.settings import StackSettings
from infra.stack.process import free_port
from infra.stack.tls import ensure_certificates, issue
from registry.crypto import Keyring, parse_keys
from registry.settings import RegistrySettings
from tests.conftest import ROOT
from tests.registry.harness import create_database, drop_database

pytestmark = pytest.mark.integration


@pytest.fixture
def database(stack_settings: StackSettings) -> Iterator[str]:
    name = create_database(stack_settings)
    yield name
    drop_database(stack_settings, name)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "registry", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_create_admin_serve_https_and_rotate_the_key(database: str, tmp_path: Path) -> None:
    port = free_port()
    tls = ensure_certificates(tmp_path / "tls")
    key_file = tmp_path / "secrets" / "registry_keys"
    env = {
        **os.environ,
        "FLEETPULSE_PG_DATABASE": database,
        "FLEETPULSE_REGISTRY_KEY_FILE": str(key_file),
        "FLEETPULSE_REGISTRY_PORT": str(port),
        "FLEETPULSE_REGISTRY_TLS_CERT": str(tls.server_cert),
        "FLEETPULSE_REGISTRY_TLS_KEY": str(tls.server_key),
        "FLEETPULSE_REGISTRY_CONSUME_STATUS": "false",
    }
    env.pop("FLEETPULSE_REGISTRY_KEYS", None)
    password = f"admin-{uuid.uuid4().hex}"
    (tmp_path / "pw").write_text(password + "\n")

    # The first admin; the key file is generated, private to its owner.
    done = _cli(
        env, "create-admin", "--email", "Boss@Example.com", "--password-file", str(tmp_path / "pw")
    )
    assert done.returncode == 0, done.stderr
    assert "admin Boss@Example.com created" in done.stdout
    assert password not in done.stdout + done.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert parse_keys(key_file.read_text()).current == 1
    again = _cli(
        env, "create-admin", "--email", "boss@example.com", "--password-file", str(tmp_path / "pw")
    )
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1].startswith("fleetpulse: error: a user with e-mail")

    # Serve over HTTPS with the certificate the variables name, verified against the CA; stop
    # with SIGTERM.
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "registry"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ssh = f"ssh-{uuid.uuid4().hex}"
    try:
        with httpx.Client(
            base_url=f"https://localhost:{port}",
            verify=ssl.create_default_context(cafile=tls.ca_cert),
        ) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "registry did not start"
                time.sleep(0.2)
            r = client.post("/login", json={"email": "boss@example.com", "password": password})
            assert r.status_code == 200, r.text
            auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
            body = {"name": "db", "hostname": f"db-{uuid.uuid4().hex[:6]}", "username": "root"}
            r = client.post("/servers", headers=auth, json={**body, "password": ssh})
            assert r.status_code == 201, r.text
            server_id = r.json()["id"]
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://localhost:{port}/health", timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert password not in out + err and ssh not in out + err
    assert "registry on https://127.0.0.1" in err

    # Rotation: a new key version, every row re-encrypted under it.
    settings = RegistrySettings(pg_database=database, registry_key_file=key_file)
    rotated = _cli(env, "rotate-key")
    assert rotated.returncode == 0, rotated.stderr
    assert "key version 2 active; 1 server passwords re-encrypted" in rotated.stdout
    keyring = parse_keys(key_file.read_text())
    assert sorted(keyring.keys) == [1, 2]
    stored = _stored(settings, server_id)
    assert Keyring.version_of(stored) == 2
    assert keyring.decrypt(stored, server_id) == ssh
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    # A row that does not decrypt stops the rotation, and no row changes.
    _execute(
        settings,
        "INSERT INTO servers (id, name, hostname, port, username, encrypted_password) "
        "VALUES ($1, 'bad', $2, 22, 'u', $3)",
        str(uuid.uuid4()),
        f"bad-{uuid.uuid4().hex[:6]}",
        keyring.encrypt("x", "another-row"),
    )
    failed = _cli(env, "rotate-key")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        "fleetpulse: error: stored password does not decrypt (wrong key, wrong row or altered)"
    )
    assert _stored(settings, server_id) == stored


def _execute(settings: RegistrySettings, query: str, *args: object) -> list[object]:
    import asyncio

    import asyncpg

    async def go() -> list[object]:
        conn = await asyncpg.connect(**settings.connect_kwargs())
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def _stored(settings: RegistrySettings, server_id: str) -> str:
    (row,) = _execute(settings, "SELECT encrypted_password FROM servers WHERE id = $1", server_id)
    value: str = row["encrypted_password"]  # type: ignore[index]
    return value


def test_serve_without_a_database_is_one_line(tmp_path: Path) -> None:
    tls = issue(tmp_path / "tls", "registry")  # the certificate is checked first
    env = {
        **os.environ,
        "FLEETPULSE_PG_PORT": str(free_port()),
        "FLEETPULSE_REGISTRY_KEY_FILE": str(tmp_path / "keys"),
        "FLEETPULSE_REGISTRY_TLS_CERT": str(tls.cert),
        "FLEETPULSE_REGISTRY_TLS_KEY": str(tls.key),
    }
    done = _cli(env)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("fleetpulse: error: cannot connect to postgresql://")
    assert not (tmp_path / "keys").exists()


def test_serve_an_unmigrated_database_is_one_line(
    stack_settings: StackSettings, tmp_path: Path
) -> None:
    env = {**os.environ, "FLEETPULSE_PG_DATABASE": "postgres"}
    env["FLEETPULSE_REGISTRY_KEY_FILE"] = str(tmp_path / "keys")
    done = _cli(env)
    assert done.returncode == 1
    assert "lacks the registry's tables: run `fleetpulse db migrate`" in done.stderr


def test_create_admin_needs_a_password_source(database: str, tmp_path: Path) -> None:
    env = {**os.environ, "FLEETPULSE_PG_DATABASE": database}
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "registry", "create-admin", "--email", "a@b.c"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "use --password-file" in done.stderr
    (tmp_path / "short").write_text("short\n")
    done = _cli(env, "create-admin", "--email", "a@b.c", "--password-file", str(tmp_path / "short"))
    assert done.returncode == 1 and "invalid admin" in done.stderr
