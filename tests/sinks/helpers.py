"""Builders shared by the sink tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from schemas import MetricStats, ProcessInfo, Resolution, WindowAggregate

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


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
) -> WindowAggregate:
    five = resolution is Resolution.FIVE_SECONDS
    return WindowAggregate(
        server_id=server_id,
        resolution=resolution,
        window_start=start,
        window_end=start + timedelta(seconds=resolution.seconds),
        count=count,
        cpu_usage=MetricStats(
            avg=cpu, min=max(cpu - 1, 0), max=min(cpu + 1, 100), last=cpu if five else None
        ),
        memory_usage=MetricStats(avg=mem, min=mem - 1, max=mem + 1, last=mem if five else None),
        disk_usage=MetricStats(avg=disk, min=disk, max=disk, last=disk if five else None),
        network_rx=rx,
        network_tx=tx,
        processes=[ProcessInfo(pid=1, name="init", cpu_usage=0.5, memory_usage=0.1)]
        if five
        else None,
        last_event_at=start + timedelta(seconds=resolution.seconds - 1),
        emitted_at=start + timedelta(seconds=resolution.seconds + 5),
    )


async def add_server(conn: asyncpg.Connection, server_id: str) -> None:
    await conn.execute(
        "INSERT INTO servers (id, name, hostname, port, username, encrypted_password) "
        "VALUES ($1, 'test', $2, 22, 'ops', 'v1:test') ON CONFLICT DO NOTHING",
        server_id,
        f"{server_id}.test",
    )
