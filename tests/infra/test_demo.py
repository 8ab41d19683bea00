"""Integration: `fleetpulse demo --seconds N` on the test stack, as an operator runs it."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from infra.demo import DemoPaths
from infra.settings import StackSettings
from infra.stack.process import free_port
from producers.simulator import simulated_server_id
from tests.conftest import ROOT

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


def test_demo_lands_rows_and_leaves_no_child(stack_settings: StackSettings) -> None:
    started = datetime.now(UTC) - timedelta(seconds=1)
    env = {**os.environ, "FLEETPULSE_REGISTRY_PORT": str(free_port())}
    proc = subprocess.run(
        [sys.executable, "-m", "infra.cli", "demo", "--seconds", "40", "--hosts", str(HOSTS)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240,
    )  # fmt: skip
    out = proc.stdout.decode()
    assert proc.returncode == 0, out[-4000:]

    # Every child it started has exited, and said so with a clean status.
    pids = [int(p) for p in re.findall(r"\b(?:registry|sink|stream|agent|simulate) pid (\d+)", out)]
    assert len(set(pids)) == 5, out[-4000:]
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert "registry 0, sink 0, stream 0, agent 0, simulate 0" in out

    paths = DemoPaths(stack_settings.home_dir)
    own_id = paths.server_id.read_text().strip()
    password_file = paths.admin_password
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password_file.read_text().strip() in out  # printed to the operator, once
    assert f"/servers/{own_id}/metrics?" in out

    ids = [own_id, *(simulated_server_id(42, i) for i in range(HOSTS))]
    registered, landed = asyncio.run(_landed(stack_settings, ids, started))
    assert registered == len(ids)
    assert landed == set(ids)  # this machine's agent and every simulated host
