"""Integration: percentiles stored in the rollups and merged in SQL, on plain PostgreSQL and on
the TimescaleDB stand-in: per server, across servers, equal to merging in Python, within 1 % of
the exact percentiles of the raw samples."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import asyncpg
import pytest

from infra.db import migrate
from schemas import Resolution, sketch
from sinks.fleet import read_fleet
from sinks.read import ReadError, read_series
from sinks.rows import TABLES, to_row
from sinks.writer import BatchWriter
from tests.factories import ROW_T0, add_server, aggregate

pytestmark = pytest.mark.integration

HOUR0 = ROW_T0.replace(minute=0, second=0, microsecond=0)
HOURLY = TABLES[Resolution.ONE_HOUR]
SERVERS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(6)]


def exact(values: list[float], q: float) -> float:
    return sorted(values)[math.floor(q * (len(values) - 1))]


def series(server: int, hour: int) -> dict[str, list[float]]:
    """An hour of 1 s samples: busy servers, idle ones, one pinned core for 5 minutes."""
    rnd = random.Random(server * 100 + hour)
    cpu = [
        100.0 if server == 3 and 600 <= i < 900 else rnd.uniform(0, 10 + 15 * server)
        for i in range(3600)
    ]
    memory = [40.0 + server + rnd.random() for _ in range(3600)]
    disk = [0.0 if server == 0 else 55.5] * 3600
    return {"cpu_usage": cpu, "memory_usage": memory, "disk_usage": disk}


async def load(
    conn: asyncpg.Connection, method: str
) -> dict[tuple[int, int], dict[str, list[float]]]:
    """Two hours of 6 servers, written as the sink writes them; one row without sketches (a
    window restored from older state) in hour 2 of server 5."""
    raw = {}
    rows = []
    for s, sid in enumerate(SERVERS):
        await add_server(conn, sid)
        for h in range(2):
            raw[(s, h)] = series(s, h)
            agg = aggregate(
                sid, HOUR0 + timedelta(hours=h), Resolution.ONE_HOUR, samples=raw[(s, h)]
            )
            rows.append(to_row(agg))
    unsketched = aggregate(SERVERS[5], HOUR0 + timedelta(hours=2), Resolution.ONE_HOUR, count=3600)
    rows.append(to_row(unsketched))
    writer = BatchWriter(method)  # type: ignore[arg-type]
    async with conn.transaction():
        await writer.upsert(conn, HOURLY, rows)
    return raw


async def check(
    conn: asyncpg.Connection, raw: dict[tuple[int, int], dict[str, list[float]]]
) -> None:
    end = HOUR0 + timedelta(hours=4)
    # Per server: the stored percentiles, within 1 % of the raw samples'.
    points = await read_series(conn, SERVERS[3], HOUR0, end, "1h")
    assert [p.samples for p in points] == [3600, 3600, 0, 0]
    for h in range(2):
        cpu = raw[(3, h)]["cpu_usage"]
        for name in ("p50", "p95", "p99"):
            want = exact(cpu, sketch.QUANTILES[name])
            assert abs(getattr(points[h], f"cpu_usage_{name}") - want) <= 0.01 * want
    assert points[0].cpu_usage_p99 == 100.0  # the pinned core, which the average hides
    assert points[0].cpu_usage_avg is not None and points[0].cpu_usage_avg < 50
    assert points[2].cpu_usage_p50 is None
    # The 5 s steps have none.
    minutes = await read_series(conn, SERVERS[3], HOUR0, HOUR0 + timedelta(minutes=2), "1m")
    assert all(p.cpu_usage_p99 is None for p in minutes)

    # Fleet-wide, every server: SQL's merge equals Python's, and is within 1 % of exact.
    for stat, q in sketch.QUANTILES.items():
        fleet = await read_fleet(conn, HOUR0, end, "1h", stat)
        assert [(p.samples, p.servers) for p in fleet] == [
            (6 * 3600, 6),
            (6 * 3600, 6),
            (3600, 1),
            (0, 0),
        ]
        for h in range(2):
            for metric in ("cpu_usage", "memory_usage", "disk_usage"):
                values = [v for s in range(6) for v in raw[(s, h)][metric]]
                merged: dict[int, int] = {}
                rows = await conn.fetch(
                    f"SELECT {metric}_sketch_keys AS k, {metric}_sketch_counts AS c "
                    "FROM metrics_hourly WHERE bucket = $1",
                    HOUR0 + timedelta(hours=h),
                )
                for r in rows:
                    sketch.merge(merged, sketch.from_arrays(r["k"], r["c"]))
                [in_python] = sketch.quantiles(merged, [q], min(values), max(values))
                got = getattr(fleet[h], metric)
                assert got == pytest.approx(in_python, rel=1e-12)
                assert abs(got - exact(values, q)) <= 0.01 * exact(values, q) + 1e-12
        # Hour 2 holds a row without a sketch: no percentile rather than a guess.
        assert fleet[2].cpu_usage is None and fleet[3].cpu_usage is None

    # A set of servers, and the other statistics.
    some = await read_fleet(conn, HOUR0, HOUR0 + timedelta(hours=1), "1h", "p99", SERVERS[:2])
    values = [v for s in range(2) for v in raw[(s, 0)]["cpu_usage"]]
    assert some[0].servers == 2 and some[0].cpu_usage is not None
    assert abs(some[0].cpu_usage - exact(values, 0.99)) <= 0.01 * exact(values, 0.99)
    top = await read_fleet(conn, HOUR0, HOUR0 + timedelta(hours=1), "1h", "max")
    assert top[0].cpu_usage == 100.0
    mean = await read_fleet(conn, HOUR0, HOUR0 + timedelta(hours=1), "1h", "avg")
    every = [v for s in range(6) for v in raw[(s, 0)]["cpu_usage"]]
    assert mean[0].cpu_usage == pytest.approx(sum(every) / len(every))

    with pytest.raises(ReadError, match="hourly and daily rollups: use step 1h or 1d"):
        await read_fleet(conn, HOUR0, end, "1m", "p95")
    with pytest.raises(ReadError, match="stat must be one of"):
        await read_fleet(conn, HOUR0, end, "1h", "p42")


@pytest.mark.parametrize("method", ["copy", "unnest"])
async def test_percentiles_per_server_and_across_servers_on_postgres(
    app_conn: asyncpg.Connection, method: str
) -> None:
    await migrate(app_conn, storage="postgres")
    await check(app_conn, await load(app_conn, method))


async def test_percentiles_per_server_and_across_servers_on_timescaledb(
    ts_conn: asyncpg.Connection,
) -> None:
    await migrate(ts_conn)
    await check(ts_conn, await load(ts_conn, "unnest"))  # the stand-in has no COPY
