"""Integration: `fleetpulse demo --seconds N` on the test stack, as an operator runs it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from infra.db import migrate
from infra.demo import DemoPaths, ensure_admin, register_servers
from infra.settings import StackSettings
from infra.stack.process import free_port
from producers.simulator import simulated_server_id
from registry.crypto import Keyring
from registry.settings import RegistrySettings
from runtime.errors import FleetPulseError
from tests.conftest import ROOT
from tests.factories import KEY_1, registry_settings

pytestmark = pytest.mark.integration

HOSTS = 5


async def _landed(settings: StackSettings, ids: list[str], since: datetime) -> tuple[int, set[str]]:
    """(how many of `ids` are registered, which have 5 s rows since `since`)."""
    conn = await asyncpg.connect(**settings.connect_kwargs())
    try:
        registered = await conn.fetchval(
            "SELECT count(*) FROM servers WHERE id = ANY($1::text[])", ids
        )
        rows = await conn.fetch(
            "SELECT DISTINCT server_id FROM metrics_snapshots "
            'WHERE server_id = ANY($1::text[]) AND "timestamp" >= $2',
            ids,
            since,
        )
    finally:
        await conn.close()
    return registered, {r["server_id"] for r in rows}


def _registry_health(port: int, settings: StackSettings) -> int:
    """GET /health of the demo's registry over HTTPS, verified against the stack's CA."""
    verify = ssl.create_default_context(cafile=settings.home_dir / "tls" / "ca.crt")
    try:
        return httpx.get(f"https://127.0.0.1:{port}/health", verify=verify, timeout=10).status_code
    except httpx.TransportError:
        return 0  # not serving yet


def test_demo_lands_rows_and_ctrl_c_leaves_no_child(
    stack_settings: StackSettings, tmp_path: Path
) -> None:
    """Run as from a terminal: rows land for this machine and every simulated host, then
    Ctrl-C (SIGINT to the terminal's foreground process group) stops every child."""
    started = datetime.now(UTC) - timedelta(seconds=1)
    port = free_port()
    env = {**os.environ, "FLEETPULSE_REGISTRY_PORT": str(port)}
    # Every child as its own Kafka user, allowed only its role (not the tests' `admin`).
    env.pop("FLEETPULSE_KAFKA_SASL_USERNAME", None)
    screen = tmp_path / "screen.txt"
    with screen.open("wb") as tty:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "demo", "--hosts", str(HOSTS)],
            env=env, cwd=ROOT, stdout=tty, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell gives a foreground job
        )  # fmt: skip
    paths = DemoPaths(stack_settings.home_dir)
    deadline = time.monotonic() + 180
    ids: list[str] = []
    landed: set[str] = set()
    health = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if paths.server_id.exists() and not ids:
                ids = [paths.server_id.read_text().strip()]
                ids += [simulated_server_id(42, i) for i in range(HOSTS)]
            if ids:
                registered, landed = asyncio.run(_landed(stack_settings, ids, started))
                if registered == len(ids) and landed == set(ids):
                    health = _registry_health(port, stack_settings)
                    if health == 200:
                        break
            time.sleep(1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        proc.wait(timeout=120)
    out = screen.read_text()
    assert ids and landed == set(ids), out[-4000:]  # this machine's agent and every host
    assert health == 200, out[-4000:]  # the registry child, over HTTPS
    assert proc.returncode == 0, out[-4000:]

    # Every child it started has exited, and said so with a clean status.
    roles = r"\b(?:backup|registry|sink|stream|agent|simulate)\s+pid\s+(\d+)"  # lines wrap
    pids = [int(p) for p in re.findall(roles, out)]
    assert len(set(pids)) == 6, out[-4000:]
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert "backup 0, registry 0, sink 0, stream 0, agent 0, simulate 0" in out

    own_id = ids[0]
    password_file = paths.admin_password
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password_file.read_text().strip() in out  # printed to the operator, once
    assert f"/servers/{own_id}/metrics?" in out
    # The curl lines reach the registry over HTTPS, verified against the stack's CA.
    ca = stack_settings.home_dir / "tls" / "ca.crt"
    assert f"TOKEN=$(curl -s --cacert {ca} https://127.0.0.1:" in out
    assert f'curl -s --cacert {ca} "https://127.0.0.1:' in out


@pytest.fixture
async def demo_registry(
    stack_settings: StackSettings, fresh_database: str, app_conn: asyncpg.Connection
) -> RegistrySettings:
    """The registry's settings for a migrated database of the test's own."""
    await migrate(app_conn)
    return registry_settings(stack_settings, fresh_database)


async def test_the_admin_is_made_once_and_a_database_away_is_an_error(
    demo_registry: RegistrySettings, tmp_path: Path
) -> None:
    paths = DemoPaths(tmp_path)
    password = await ensure_admin(demo_registry, paths)
    assert password and paths.admin_password.read_text().strip() == password
    assert await ensure_admin(demo_registry, paths) == password  # read back, not made again
    # The file gone, the admin is still there: that conflict is "exists already".
    paths.admin_password.unlink()
    assert await ensure_admin(demo_registry, paths) is None
    assert not paths.admin_password.exists()
    # Any other failure is the failure it is (whichever error says the database is away).
    away = demo_registry.model_copy(update={"pg_port": free_port()})
    with pytest.raises(FleetPulseError, match="cannot connect to"):
        await ensure_admin(away, paths)
    assert not paths.admin_password.exists()


async def test_servers_are_registered_through_the_inventory_once(
    demo_registry: RegistrySettings, app_conn: asyncpg.Connection
) -> None:
    own_id = str(uuid.uuid4())
    taken = f"sim-0001-{simulated_server_id(7, 1)[:8]}.fleetpulse.demo"
    await app_conn.execute(
        "INSERT INTO servers (id, name, hostname, port, username, encrypted_password) "
        "VALUES ($1, 'other', $2, 22, 'u', 'x')",
        str(uuid.uuid4()),
        taken,
    )
    assert await register_servers(demo_registry, own_id, 3, 7) == (4, 0)
    assert await register_servers(demo_registry, own_id, 3, 7) == (0, 4)
    keyring = Keyring({1: KEY_1})
    ids = [own_id, *(simulated_server_id(7, i) for i in range(3))]
    rows = await app_conn.fetch(
        "SELECT id, hostname, server_category::text AS category, encrypted_password "
        "FROM servers WHERE id = ANY($1::text[])",
        ids,
    )
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == set(ids)
    assert by_id[own_id]["category"] == "physical"
    assert {by_id[i]["category"] for i in ids[1:]} == {"virtual"}
    # Another id held the hostname: the new row's name carries its own id.
    assert by_id[ids[2]]["hostname"] == f"{taken}-{ids[2][:8]}"
    for server_id, row in by_id.items():
        assert len(keyring.decrypt(row["encrypted_password"], server_id)) == 32
