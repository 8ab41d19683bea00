"""Integration: `fleetpulse demo --seconds N` on the test stack, as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from infra.db import migrate
from infra.demo import ABSENT_RULE, CPU_RULE, DemoPaths, ensure_admin, register_servers
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
    env["FLEETPULSE_SIM_SILENT_AFTER"] = "86400"  # every host keeps sending here
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
    roles = r"\b(?:backup|registry|sink|stream|alerts|agent|simulate)\s+pid\s+(\d+)"  # wraps
    pids = [int(p) for p in re.findall(roles, out)]
    assert len(set(pids)) == 7, out[-4000:]
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    words = " ".join(out.split())  # the console wraps long lines
    assert "backup 0, registry 0, sink 0, stream 0, alerts 0, agent 0, simulate 0" in words

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


def _children(paths: DemoPaths) -> dict[str, dict[str, int]]:
    """The demo's record of its children (replaced whole by the demo: never half written)."""
    try:
        record: dict[str, dict[str, int]] = json.loads(paths.children.read_text())
    except FileNotFoundError:
        return {}
    return record


def _kill_9(paths: DemoPaths, name: str, demo: subprocess.Popen[bytes]) -> tuple[int, int]:
    """`kill -9` the child `name`; wait for the demo to start it again. (old pid, new pid)."""
    old = _children(paths)[name]["pid"]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and demo.poll() is None:
        entry = _children(paths)[name]
        if entry["pid"] != old:
            assert entry["restarts"] == 1 and entry["last_exit"] == -signal.SIGKILL, entry
            assert Path(f"/proc/{entry['pid']}").exists()
            assert not Path(f"/proc/{old}").exists()  # reaped by the demo
            return old, entry["pid"]
        time.sleep(0.2)
    raise AssertionError(f"{name} (pid {old}) was not restarted within 30 s")


async def _windows(
    settings: StackSettings, ids: list[str], since: datetime, until: datetime | None = None
) -> dict[str, dict[datetime, int]]:
    """Each server's 5 s rows in [since, until): timestamp → sample_count."""
    conn = await asyncpg.connect(**settings.connect_kwargs())
    try:
        rows = await conn.fetch(
            'SELECT server_id, "timestamp", sample_count FROM metrics_snapshots '
            'WHERE server_id = ANY($1::text[]) AND "timestamp" >= $2 AND "timestamp" < $3',
            ids,
            since,
            until or datetime.now(UTC) + timedelta(days=1),
        )
    finally:
        await conn.close()
    found: dict[str, dict[datetime, int]] = {i: {} for i in ids}
    for r in rows:
        assert r["timestamp"] not in found[r["server_id"]]  # exactly once
        found[r["server_id"]][r["timestamp"]] = r["sample_count"]
    return found


async def _rule_names(settings: StackSettings) -> set[str]:
    conn = await asyncpg.connect(**settings.connect_kwargs())
    try:
        return {r["name"] for r in await conn.fetch("SELECT name FROM alert_rules")}
    finally:
        await conn.close()


def _wait(
    what: str, deadline: float, ok: Callable[[], bool], demo: subprocess.Popen[bytes]
) -> None:
    while not ok():
        assert demo.poll() is None, f"the demo exited ({demo.returncode}) waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_every_child_killed_with_sigkill_comes_back_and_no_window_is_lost(
    stack_settings: StackSettings, tmp_path: Path
) -> None:
    """Kill each child of a running demo with SIGKILL, one at a time: each is started again
    (a new pid, one restart recorded) and, from the producers' return on, every 5 s window of
    every simulated host lands whole (5 samples), once, through the sink's and the stream
    worker's kills; this machine's agent and the registry work again."""
    port = free_port()
    env = {**os.environ, "FLEETPULSE_REGISTRY_PORT": str(port)}
    env.pop("FLEETPULSE_KAFKA_SASL_USERNAME", None)
    env["FLEETPULSE_SIM_SILENT_AFTER"] = "86400"  # every host keeps sending here
    screen = tmp_path / "screen.txt"
    with screen.open("wb") as tty:
        demo = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "demo", "--hosts", str(HOSTS)],
            env=env, cwd=ROOT, stdout=tty, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    paths = DemoPaths(stack_settings.home_dir)
    sims = [simulated_server_id(42, i) for i in range(HOSTS)]
    pids: list[int] = []
    try:
        started = datetime.now(UTC)
        deadline = time.monotonic() + 120

        def all_landed(since: datetime, ids: list[str]) -> Callable[[], bool]:
            return lambda: all(asyncio.run(_windows(stack_settings, ids, since)).values())

        _wait("the demo's children", deadline, lambda: len(_children(paths)) == 7, demo)
        own_id = paths.server_id.read_text().strip()
        _wait("rows of every host", deadline, all_landed(started, [own_id, *sims]), demo)

        # The producers first: the seconds they are down are lost to every window they span.
        back = datetime.now(UTC)
        for name in ("simulate", "agent"):
            pids += _kill_9(paths, name, demo)
        deadline = time.monotonic() + 60
        _wait("the restarted simulator's rows", deadline, all_landed(back, sims), demo)
        firsts = asyncio.run(_windows(stack_settings, sims, back))
        # The first window after its return may be partial; from the next one on, all whole.
        since = max(min(windows) for windows in firsts.values()) + timedelta(seconds=5)

        for name in ("backup", "registry", "sink", "stream", "alerts"):
            pids += _kill_9(paths, name, demo)
            time.sleep(3)  # one down at a time
        last_restart = datetime.now(UTC)
        until = last_restart.replace(microsecond=0) + timedelta(seconds=15)
        until -= timedelta(seconds=until.second % 5)
        span = int((until - since).total_seconds())
        expected = {since + timedelta(seconds=k) for k in range(0, span, 5)}
        assert len(expected) >= 4  # the span covers the sink's and the stream's kills

        def whole() -> bool:
            found = asyncio.run(_windows(stack_settings, sims, since, until))
            return all(set(w) == expected and set(w.values()) == {5} for w in found.values())

        deadline = time.monotonic() + 90
        try:
            _wait("every window whole", deadline, whole, demo)
        except AssertionError:
            found = asyncio.run(_windows(stack_settings, sims, since, until))
            missing = {s[:8]: sorted(expected - set(w)) for s, w in found.items()}
            short = {s[:8]: {t: n for t, n in w.items() if n != 5} for s, w in found.items()}
            raise AssertionError(f"missing {missing}, short {short}") from None
        _wait("this machine's rows", deadline, all_landed(last_restart, [own_id]), demo)
        _wait("the registry", deadline, lambda: _registry_health(port, stack_settings) == 200, demo)
        restarts = {name: entry["restarts"] for name, entry in _children(paths).items()}
        assert restarts == dict.fromkeys(restarts, 1) and len(restarts) == 7
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)
        demo.wait(timeout=120)
    out = screen.read_text()
    assert demo.returncode == 0, out[-4000:]
    # Each restart logged with the signal; the demo's own stop restarted nothing.
    assert out.count("killed by SIGKILL after") == 7, out[-4000:]
    assert out.count(" restarted: pid ") == 7, out[-4000:]
    words = " ".join(out.split())  # the console wraps long lines
    assert "backup 0, registry 0, sink 0, stream 0, alerts 0, agent 0, simulate 0" in words
    assert {CPU_RULE, ABSENT_RULE} <= asyncio.run(_rule_names(stack_settings))
    assert "restarted while the demo ran: backup 1x (last killed by SIGKILL)" in words
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
