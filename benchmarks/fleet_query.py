"""The fleet-wide percentile query: p99 over 24 hours x 10,000 servers, in ms.

A fresh benchmark database on the local PostgreSQL 15 gets SERVERS servers, each with HOURS
hourly rows and one daily row as the sink writes them, with sketches of realistic shape (CPU
spread over a band of 5 to 60 buckets, memory and disk over 1 to 3: 1 s samples of an hour of a
busy or idle host). Timed, RUNS times each, through `sinks.fleet.read_fleet` (one SQL statement
that unnests and merges every row's sketch in the database):
- the fleet's hourly p99 for each of the 24 hours, from the 240,000 hourly rows;
- the fleet's p99 of the day, from the 10,000 daily rows (`step=1d`).

Each result is checked first: every bucket holds every server and all its samples, and the
percentile equals the one merged in Python from the same rows; a run that differs is a
failure, never a figure.

    python -m benchmarks.fleet_query [--servers N] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from benchmarks.common import bench_database, drop_database, median, register_servers, stack_up
from infra.db import migrate
from infra.settings import StackSettings
from producers.simulator import simulated_server_id
from schemas import Resolution, sketch
from sinks.fleet import StatPoint, read_fleet
from sinks.rows import TABLES

SERVERS = 10_000
HOURS = 24
RUNS = 5
DAY = datetime(2026, 11, 25, tzinfo=UTC)
SEED = 4242


def _band(rnd: random.Random, lo_value: float, hi_value: float, width: int, n: int) -> list[int]:
    """Keys and counts (flat) of `n` samples spread evenly over `width` buckets from a value."""
    start = sketch.key(rnd.uniform(lo_value, hi_value))
    keys = list(range(start, start + width))
    counts = [n // width] * width
    counts[0] += n - sum(counts)
    return [*keys, *counts]


def _stats(flat: list[int]) -> tuple[float, float, float, list[int], list[int]]:
    """avg (of the representatives), min, max, keys, counts of a flat band."""
    half = len(flat) // 2
    keys, counts = flat[:half], flat[half:]
    values = [sketch.representative(k) for k in keys]
    avg = sum(v * c for v, c in zip(values, counts, strict=True)) / sum(counts)
    return min(100.0, avg), min(values), min(100.0, max(values)), keys, counts


def _row(server_id: str, bucket: datetime, samples: int, rnd: random.Random) -> tuple[object, ...]:
    """A rollup row in `TABLES` column order, its sketches of a plausible shape."""
    metrics = [
        _stats(_band(rnd, 0.5, 60.0, rnd.randint(5, 60), samples)),
        _stats(_band(rnd, 20.0, 80.0, rnd.randint(1, 3), samples)),
        _stats(_band(rnd, 10.0, 95.0, rnd.randint(1, 2), samples)),
    ]
    quantiles = []
    for _, lo, hi, keys, counts in metrics:
        quantiles += sketch.quantiles(
            dict(zip(keys, counts, strict=True)), sketch.QUANTILES.values(), lo, hi
        )
    return (
        server_id,
        bucket,
        samples,
        *(v for avg, lo, hi, _, _ in metrics for v in (avg, lo, hi)),
        samples * 1000,
        samples * 500,
        *quantiles,
        *(v for _, _, _, keys, counts in metrics for v in (keys, counts)),
    )


async def load(conn: asyncpg.Connection, servers: int, hours: int) -> None:
    await migrate(conn, storage="postgres")
    await register_servers(conn, SEED, servers)
    rnd = random.Random(SEED)  # noqa: S311 - sample shapes, not a secret
    hourly = TABLES[Resolution.ONE_HOUR]
    daily = TABLES[Resolution.ONE_DAY]
    batch: list[tuple[object, ...]] = []
    for i in range(servers):
        sid = simulated_server_id(SEED, i)
        batch += [_row(sid, DAY + timedelta(hours=h), 3600, rnd) for h in range(hours)]
        if len(batch) >= 20_000:
            await conn.copy_records_to_table(hourly.name, records=batch, columns=hourly.names)
            batch = []
    if batch:
        await conn.copy_records_to_table(hourly.name, records=batch, columns=hourly.names)
    days = [_row(simulated_server_id(SEED, i), DAY, 86_400, rnd) for i in range(servers)]
    await conn.copy_records_to_table(daily.name, records=days, columns=daily.names)
    await conn.execute("ANALYZE metrics_hourly; ANALYZE metrics_daily")


async def _python_p99(conn: asyncpg.Connection, table: str, bucket: datetime) -> float | None:
    """The p99 CPU of every row of `bucket`, merged in Python: the reference."""
    rows = await conn.fetch(
        f"SELECT cpu_usage_sketch_keys AS k, cpu_usage_sketch_counts AS c, cpu_usage_min AS lo, "
        f"cpu_usage_max AS hi FROM {table} WHERE bucket = $1",
        bucket,
    )
    merged: dict[int, int] = {}
    for r in rows:
        sketch.merge(merged, sketch.from_arrays(r["k"], r["c"]))
    lo, hi = min(r["lo"] for r in rows), max(r["hi"] for r in rows)
    [value] = sketch.quantiles(merged, [0.99], lo, hi)
    return value


@dataclass
class Timings:
    hourly_ms: list[float]
    daily_ms: list[float]


async def measure(settings: StackSettings, servers: int, hours: int, runs: int) -> Timings:
    """Load a fresh database, check both queries' results, time them; drop the database."""
    database = await bench_database(settings)
    try:
        conn = await asyncpg.connect(**settings.connect_kwargs(database=database))
        try:
            print(f"loading {servers:,} servers x {hours} hourly rows …", flush=True)
            await load(conn, servers, hours)
            timings = Timings([], [])
            end = DAY + timedelta(hours=hours)
            for i in range(runs):
                started = time.perf_counter()
                hourly = await read_fleet(conn, DAY, end, "1h", "p99")
                timings.hourly_ms.append(1000 * (time.perf_counter() - started))
                started = time.perf_counter()
                daily = await read_fleet(conn, DAY, DAY + timedelta(days=1), "1d", "p99")
                timings.daily_ms.append(1000 * (time.perf_counter() - started))
                if i == 0:
                    await _check(conn, hourly, daily, servers, hours)
                print(
                    f"run {i + 1}/{runs}: 24 hourly p99s {timings.hourly_ms[-1]:,.0f} ms, "
                    f"the day's p99 {timings.daily_ms[-1]:,.0f} ms",
                    flush=True,
                )
            return timings
        finally:
            await conn.close()
    finally:
        await drop_database(settings, database)


async def _check(
    conn: asyncpg.Connection,
    hourly: list[StatPoint],
    daily: list[StatPoint],
    servers: int,
    hours: int,
) -> None:
    if [(p.servers, p.samples) for p in hourly] != [(servers, servers * 3600)] * hours:
        raise RuntimeError("the hourly fleet query missed servers or samples")
    if [(p.servers, p.samples) for p in daily] != [(servers, servers * 86_400)]:
        raise RuntimeError("the daily fleet query missed servers or samples")
    for table, points in (("metrics_hourly", hourly[:1]), ("metrics_daily", daily)):
        want = await _python_p99(conn, table, points[0].bucket)
        if (
            points[0].cpu_usage is None
            or want is None
            or abs(points[0].cpu_usage - want) > 1e-9 * want
        ):
            raise RuntimeError(f"{table}: SQL's p99 {points[0].cpu_usage} is not Python's {want}")


def run(servers: int = SERVERS, runs: int = RUNS) -> str:
    settings = stack_up()
    t = asyncio.run(measure(settings, servers, HOURS, runs))
    return "\n".join(
        [
            "## Fleet-wide percentiles",
            "",
            f"`GET /fleet/metrics?stat=p99` through `sinks.fleet.read_fleet` on the local "
            f"PostgreSQL 15 (TLS), {servers:,} servers with {HOURS} hourly rows each "
            f"({servers * HOURS:,} rows) and a daily row each, sketches of realistic shape "
            "(CPU over 5 to 60 buckets, memory and disk over 1 to 3); each query's result "
            "checked first (every server and sample in every bucket, the p99 equal to the one "
            f"merged in Python from the same rows); {runs} runs, the first on a cold cache.",
            "",
            "| Query | Median, ms | Range, ms |",
            "| --- | ---: | ---: |",
            f"| The fleet's p99 CPU, memory and disk for each of {HOURS} hours (hourly rows) | "
            f"{median(t.hourly_ms):,.0f} | {min(t.hourly_ms):,.0f} to {max(t.hourly_ms):,.0f} |",
            f"| The fleet's p99 CPU, memory and disk of the day (daily rows) | "
            f"{median(t.daily_ms):,.0f} | {min(t.daily_ms):,.0f} to {max(t.daily_ms):,.0f} |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fleet_query", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--servers", type=int, default=SERVERS)
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    print(run(args.servers, args.runs))


if __name__ == "__main__":
    main()
