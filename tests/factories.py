"""Builders of test data shared across the test tree: events, aggregates, registry bodies and
settings. Test modules import from here (and from harnesses), never from each other."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pydantic import SecretStr

from infra.backup.settings import BackupSettings
from infra.settings import StackSettings
from registry.settings import RegistrySettings
from schemas import (
    MetricStats,
    ProcessInfo,
    QuantileSketch,
    Resolution,
    WindowAggregate,
    sketch,
)

SERVER_ID = "6f1c2a8e-4b7d-4e0a-9c35-0d2f5b8e91a4"

#: The `scratch_cluster` fixture (tests/infra/conftest.py): start a PostgreSQL cluster of its
#: own, with pgBackRest set up, settings overridable by keyword; its settings.
ScratchCluster = Callable[..., BackupSettings]


def event_dict(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "server_id": SERVER_ID,
        "timestamp": "2026-11-25T10:00:01+00:00",
        "cpu_usage": 12.5,
        "memory_usage": 40.0,
        "disk_usage": 71.2,
        "network_rx": 1200,
        "network_tx": 800,
        "processes": [{"pid": 1, "name": "init", "cpu_usage": 0.1, "memory_usage": 0.2}],
    }
    base.update(overrides)
    return base


#: The test keyring's keys; they must never show up in a response or a log line.
KEY_1 = bytes(range(32))


KEY_2 = bytes(range(100, 132))


TEST_KEYS = f"1:{base64.b64encode(KEY_1).decode()}"


ADMIN_EMAIL = "root@fleetpulse.test"


ADMIN_PASSWORD = "admin-password-Zq8"


def registry_settings(stack: StackSettings, database: str, **overrides: Any) -> RegistrySettings:
    values: dict[str, Any] = {
        "pg_database": database,
        "registry_keys": SecretStr(TEST_KEYS),
        "registry_port": 0,
        "registry_consume_status": False,
        "registry_key_file": stack.home_dir / "secrets" / f"no-such-key-file-{database}",
    }
    values.update(overrides)
    return RegistrySettings(**values)


def role_settings(stack: StackSettings, role: str, database: str) -> StackSettings:
    """The local stack's settings, logging in to `database` as `role` with the password file
    the stack keeps for it (`<home>/secrets/pg/<role>`)."""
    return stack.model_copy(
        update={
            "pg_user": role,
            "pg_database": database,
            "pg_password": None,
            "pg_password_file": None,
        }
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def server_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "web",
        "hostname": f"{unique('web')}.example.com",
        "ip_address": "10.0.0.7",
        "port": 22,
        "username": "deploy",
        "password": f"ssh-{uuid.uuid4().hex}",
    }
    body.update(overrides)
    return body


#: Where the windowing tests' events start: two hours before a day boundary.
EVENT_T0 = datetime(2026, 11, 25, 22, 0, tzinfo=UTC)
#: Where the sink tests' rows start.
ROW_T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


SERVERS = ["6f1c2a8e-4b7d-4e0a-9c35-0d2f5b8e91a4", "0b6f6d8e-2f55-4c59-9a1c-6a8f3f4e7c21"]


def aggregate(
    server_id: str,
    start: datetime,
    resolution: Resolution = Resolution.FIVE_SECONDS,
    *,
    count: int = 5,
    cpu: float = 10.0,
    mem: float = 40.0,
    disk: float = 70.0,
    rx: int = 1000,
    tx: int = 500,
    samples: dict[str, list[float]] | None = None,
) -> WindowAggregate:
    """A window; with `samples` (a rollup's), the named metrics' statistics, percentiles and
    sketches are those of these raw samples, and `count` is their number."""
    five = resolution is Resolution.FIVE_SECONDS
    stats = {
        "cpu_usage": MetricStats(
            avg=cpu, min=max(cpu - 1, 0), max=min(cpu + 1, 100), last=cpu if five else None
        ),
        "memory_usage": MetricStats(avg=mem, min=mem - 1, max=mem + 1, last=mem if five else None),
        "disk_usage": MetricStats(avg=disk, min=disk, max=disk, last=disk if five else None),
    }
    for name, values in (samples or {}).items():
        count = len(values)
        stats[name] = sketched_stats(values)
    return WindowAggregate(
        server_id=server_id,
        resolution=resolution,
        window_start=start,
        window_end=start + timedelta(seconds=resolution.seconds),
        count=count,
        cpu_usage=stats["cpu_usage"],
        memory_usage=stats["memory_usage"],
        disk_usage=stats["disk_usage"],
        network_rx=rx,
        network_tx=tx,
        processes=[ProcessInfo(pid=1, name="init", cpu_usage=0.5, memory_usage=0.1)]
        if five
        else None,
        last_event_at=start + timedelta(seconds=resolution.seconds - 1),
        emitted_at=start + timedelta(seconds=resolution.seconds + 5),
    )


def sketched_stats(values: list[float]) -> MetricStats:
    """A rollup's statistics of raw `values`, with their percentiles and sketch."""
    counts = sketch.of(values)
    lo, hi = min(values), max(values)
    qs = sketch.quantiles(counts, sketch.QUANTILES.values(), lo, hi)
    keys, ns = sketch.to_arrays(counts)
    return MetricStats(
        avg=min(100.0, sum(values) / len(values)),
        min=lo,
        max=hi,
        **dict(zip(sketch.QUANTILES, qs, strict=True)),
        sketch=QuantileSketch(keys=keys, counts=ns),
    )


async def add_server(conn: asyncpg.Connection, server_id: str) -> None:
    await conn.execute(
        "INSERT INTO servers (id, name, hostname, port, username, encrypted_password) "
        "VALUES ($1, 'test', $2, 22, 'ops', 'v1:test') ON CONFLICT DO NOTHING",
        server_id,
        f"{server_id}.test",
    )


async def fill_snapshots(conn: asyncpg.Connection, servers: int, windows: int) -> int:
    """`servers` new servers with `windows` consecutive 5 s rows each in metrics_snapshots,
    ending now (inside the partitions the migrations create); the rows inserted."""
    ids = await conn.fetch(
        "INSERT INTO servers (id, name, hostname, port, username, encrypted_password) "
        "SELECT gen_random_uuid()::text, 'fill', 'fill-' || gen_random_uuid(), 22, 'ops', "
        "'v1:fill' FROM generate_series(1, $1) RETURNING id",
        servers,
    )
    step = Resolution.FIVE_SECONDS.seconds
    status = await conn.execute(
        'INSERT INTO metrics_snapshots (server_id, "timestamp", cpu_usage, memory_usage, '
        "disk_usage, cpu_usage_min, cpu_usage_max, memory_usage_min, memory_usage_max, "
        "disk_usage_min, disk_usage_max, sample_count, network_rx, network_tx, processes) "
        "SELECT s, date_trunc('minute', now()) - make_interval(secs => $3 * g), "
        "50 + 40 * sin(g), 40 + 10 * cos(g), 70, 10, 90, 30, 50, 70, 70, 5, g * 100, g * 50, "
        '\'[{"pid": 1, "name": "init", "cpu_usage": 0.1, "memory_usage": 0.2}]\'::jsonb '
        "FROM unnest($1::text[]) s CROSS JOIN generate_series(1, $2) g",
        [r["id"] for r in ids],
        windows,
        step,
    )
    return int(status.split()[-1])
