"""Sink service: rows/s from its topic into the database, beside `psql \\copy` of the same rows.

A fresh 6-partition 5 s aggregate topic is filled with ROWS windows (SERVERS servers x WINDOWS
windows, three processes each, as the stream worker writes them); then `fleetpulse sink`
starts on it (its own consumer group, a fresh benchmark database, TLS to both) and the clock
runs until every row is in `metrics_snapshots`. Each run's output is checked first: exactly
ROWS rows, the DLQ empty; a run that falls short is a failure, never a figure. Reported: the
sustained rate (rows landed per second between 10 % and 90 % of them), the overall rate from
process start, and the sink's CPU and peak memory. Then the same rows, as CSV, go through
`psql \\copy` into an emptied table of the same database, timed: the database's own bulk
load, with no upsert, no Kafka and no checks.

    python -m benchmarks.sink [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psutil

from benchmarks.common import (
    WINDOW,
    bench_database,
    drop_database,
    drop_topics,
    median,
    postgres_usage,
    register_servers,
    row,
    stack_up,
)
from infra.db import migrate
from infra.settings import StackSettings
from infra.stack.postgres import PostgresCluster
from producers.simulator import simulated_server_id
from runtime import kafka
from runtime.topics import create_topics
from schemas import ProcessInfo
from schemas.resolutions import BASE
from schemas.topics import TopicSpec
from sinks.rows import TABLES, to_row
from tests.factories import aggregate

SERVERS = 6_000
WINDOWS = 50
ROWS = SERVERS * WINDOWS
RUNS = 3
SEED = 11
SNAPSHOTS = TABLES[BASE.name]
PROCESSES = [
    ProcessInfo(pid=4242, name="postgres", cpu_usage=12.5, memory_usage=4.25),
    ProcessInfo(pid=977, name="java", cpu_usage=6.25, memory_usage=22.5),
    ProcessInfo(pid=1, name="systemd", cpu_usage=0.5, memory_usage=0.1),
]


class Shortfall(Exception):
    """A run whose output lost data: a failure, not a figure."""


@dataclass
class Run:
    sustained: float  # rows/s, 10 % to 90 % of the rows
    overall: float  # rows/s from process start to the last row
    cpu: float  # % of one core
    rss: float  # MiB, peak
    postgres: float = 0.0  # PostgreSQL CPU over the run (all its processes), % of one core
    writing: float = 0.0  # % of the run the sink had a write in progress
    waiting: float = 0.0  # % of the run its reader waited, next batch in hand, for a write


#: The sink's last log line: how long it wrote, and how long its reader waited for writes.
_CLOSED = re.compile(rb"([0-9.]+) s writing batches, the reader waiting ([0-9.]+) s")


def backlog() -> list[tuple[bytes, bytes]]:
    """(key, value) of every row, oldest window first."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    start -= timedelta(seconds=start.second % WINDOW)
    out = []
    for w in range(WINDOWS):
        at = start + timedelta(seconds=WINDOW * w)
        for i in range(SERVERS):
            sid = simulated_server_id(SEED, i)
            agg = aggregate(sid, at, cpu=10 + i % 80, rx=1000 + w).model_copy(
                update={"processes": PROCESSES}
            )
            out.append((sid.encode(), agg.to_json_bytes()))
    return out


async def _fill(settings: StackSettings, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = kafka.producer(settings, "bench-sink-fill")
    await producer.start()
    try:
        pending = [await producer.send(topic, v, key=k) for k, v in values]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def _prepare(settings: StackSettings) -> str:
    name = await bench_database(settings)
    conn = await asyncpg.connect(**settings.connect_kwargs(database=name))
    try:
        await migrate(conn, storage="postgres")
        await register_servers(conn, SEED, SERVERS)
    finally:
        await conn.close()
    return name


async def _count(settings: StackSettings, database: str) -> int:
    conn = await asyncpg.connect(**settings.connect_kwargs(database=database))
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {SNAPSHOTS.name}"))
    finally:
        await conn.close()


async def _watch(settings: StackSettings, database: str, proc: subprocess.Popen[bytes]) -> Run:
    ps = psutil.Process(proc.pid)
    conn = await asyncpg.connect(**settings.connect_kwargs(database=database))
    start = time.monotonic()
    samples: list[tuple[float, int]] = []
    rss, idle = 0, 0.0
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the sink exited")
            n = int(await conn.fetchval(f"SELECT count(*) FROM {SNAPSHOTS.name}"))
            now = time.monotonic() - start
            if samples and n == samples[-1][1] and n:
                idle += now - samples[-1][0]
                if idle > 60:
                    raise Shortfall(f"{n:,} of {ROWS:,} rows, none more for 60 s")
            else:
                idle = 0.0
            samples.append((now, n))
            rss = max(rss, ps.memory_info().rss)
            if n >= ROWS:
                cpu = ps.cpu_times()
                break
            await asyncio.sleep(0.25)
    finally:
        await conn.close()
    t10, n10 = next((t, n) for t, n in samples if n >= 0.1 * ROWS)
    t90, n90 = next((t, n) for t, n in samples if n >= 0.9 * ROWS)
    return Run(
        sustained=(n90 - n10) / (t90 - t10),
        overall=ROWS / now,
        cpu=100 * (cpu.user + cpu.system) / now,
        rss=rss / 2**20,
    )


async def _dead_letters(settings: StackSettings, topic: str) -> int:
    from aiokafka import TopicPartition

    consumer = kafka.consumer(settings, "bench-sink-check")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(6)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


def sink_run(
    settings: StackSettings,
    values: list[tuple[bytes, bytes]],
    attach: Callable[[int], Callable[[], None]] | None = None,
) -> Run | Shortfall:
    """One backlog drained: its figures, or the `Shortfall` that disqualifies it. `attach`
    (a profiler) is called with the sink's pid, and what it returns once the rows are in."""
    tag = uuid.uuid4().hex[:8]
    topics = {k: f"bench.sink.{k}.{tag}" for k in ("5S", "1H", "1D", "DLQ")}
    specs = [TopicSpec(t, 6, 3_600_000) for t in topics.values()]
    asyncio.run(create_topics(settings, specs))
    asyncio.run(_fill(settings, topics["5S"], values))
    database = asyncio.run(_prepare(settings))
    env = {
        **os.environ,
        **{f"FLEETPULSE_AGG_{k}_TOPIC": t for k, t in topics.items() if k != "DLQ"},
        "FLEETPULSE_DLQ_TOPIC": topics["DLQ"],
        "FLEETPULSE_SINK_GROUP": f"bench-sink-{tag}",
        "FLEETPULSE_PG_DATABASE": database,
        "FLEETPULSE_METRICS_PORT": "0",
    }
    postmaster = PostgresCluster(settings).process()
    assert postmaster is not None, "the local PostgreSQL is not running"
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the `finally` below
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "sink"], env=env, stdout=log, stderr=log
    )
    detach = attach(proc.pid) if attach else None
    pg_before = postgres_usage(postmaster)[0]
    try:
        try:
            figures = asyncio.run(_watch(settings, database, proc))
        except Shortfall as exc:
            return exc
        pg_seconds = postgres_usage(postmaster)[0] - pg_before
        if detach:
            detach()
        landed = asyncio.run(_count(settings, database))
        dead = asyncio.run(_dead_letters(settings, topics["DLQ"]))
        if landed != ROWS or dead:
            return Shortfall(f"{landed:,} of {ROWS:,} rows, {dead:,} dead letters")
        proc.terminate()
        proc.wait(timeout=60)
        log.seek(0)
        closed = _CLOSED.search(log.read())
        if closed is None:
            raise RuntimeError("the sink did not log its closing line")
        span = ROWS / figures.overall
        figures.postgres = 100 * pg_seconds / span
        figures.writing = 100 * float(closed[1]) / span
        figures.waiting = 100 * float(closed[2]) / span
        return figures
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
        asyncio.run(drop_topics(settings.kafka_bootstrap, list(topics.values())))
        asyncio.run(drop_database(settings, database))


def psql_copy(settings: StackSettings, values: list[tuple[bytes, bytes]]) -> float:
    """Seconds for `psql \\copy` of the same rows, as CSV, into an empty `metrics_snapshots`
    (over TLS, as the application role), after a first run that warms the cache."""
    from schemas import WindowAggregate

    database = asyncio.run(_prepare(settings))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rows.csv"
            with path.open("w", newline="") as f:
                w = csv.writer(f)
                for _, v in values:
                    w.writerow(to_row(WindowAggregate.model_validate_json(v)))
            cluster = PostgresCluster(settings)
            conninfo = (
                f"host={settings.pg_host} port={settings.pg_port} dbname={database} "
                f"user={settings.pg_user} sslmode=verify-full sslrootcert={settings.ca_path}"
            )
            env = {**os.environ, "PGPASSWORD": settings.password() or ""}
            columns = ", ".join(f'"{c}"' for c in SNAPSHOTS.names)
            copy = f"\\copy {SNAPSHOTS.name} ({columns}) FROM '{path}' WITH (FORMAT csv)"
            psql = str(cluster.bin / "psql")
            times = []
            for _ in range(2):
                subprocess.run(
                    [psql, conninfo, "-qc", f"TRUNCATE {SNAPSHOTS.name}"],
                    env=env, check=True,
                )  # fmt: skip
                t = time.perf_counter()
                subprocess.run([psql, conninfo, "-qc", copy], env=env, check=True)
                times.append(time.perf_counter() - t)
            if asyncio.run(_count(settings, database)) != ROWS:
                raise RuntimeError("psql \\copy did not load every row")
            return times[-1]
    finally:
        asyncio.run(drop_database(settings, database))


def measure(runs: int = RUNS) -> str:
    settings = stack_up()
    values = backlog()
    results: list[Run | Shortfall] = []
    copies: list[float] = []
    for _ in range(runs):  # interleaved: the sink, then psql, round by round
        results.append(sink_run(settings, values))
        copies.append(psql_copy(settings, values))
    ok = [r for r in results if isinstance(r, Run)]
    failed = [str(r) for r in results if isinstance(r, Shortfall)]
    if not ok:
        raise RuntimeError(f"every sink run lost data: {'; '.join(failed)}")
    copy_rate = [ROWS / t for t in copies]
    sustained = [r.sustained for r in ok]
    ratio = median(sustained) / median(copy_rate)
    return "\n".join(
        [
            "## Sink service",
            "",
            f"`fleetpulse sink` through a backlog of {ROWS:,} 5 s rows ({SERVERS:,} servers x "
            f"{WINDOWS} windows, three processes each) on a 6-partition topic, into "
            "`metrics_snapshots` of a fresh database on the local PostgreSQL 15 (TLS to both); "
            f"{runs} runs, each checked first: every row landed, DLQ empty; {len(ok)} of "
            f"{runs} passed" + (f" (failed: {'; '.join(failed)})." if failed else ".")
            + " Beside it, in the same rounds, `psql \\copy` of the same rows as CSV into the "
            "emptied table (no upsert, no Kafka, no decoding).",
            "",
            "| Measure | Median | Range |",
            "| --- | ---: | ---: |",
            row("Sink, rows/s sustained (10 % to 90 % of the rows)", sustained, "{:,.0f}"),
            row("Sink, rows/s overall, from process start", [r.overall for r in ok], "{:,.0f}"),
            row("Sink CPU, % of one core", [r.cpu for r in ok], "{:.0f}"),
            row("Sink peak RSS, MiB", [r.rss for r in ok], "{:.0f}"),
            row("PostgreSQL CPU (all its processes), % of one core",
                [r.postgres for r in ok], "{:.0f}"),
            row("Time with a write in progress, % of the run", [r.writing for r in ok], "{:.0f}"),
            row("Time the reader waited for a write, next batch in hand, % of the run",
                [r.waiting for r in ok], "{:.0f}"),
            row("`psql \\copy`, rows/s", copy_rate, "{:,.0f}"),
            "",
            f"Sink ÷ `psql \\copy`: {ratio:.2f}. The sink reads and decodes the next batch while "
            "one is written (one write at a time): the write in progress most of the run, and "
            "the reader waiting for it, say the database side (COPY, commit, and the asyncio "
            "turns the write shares with the decoding) sets the pace; the reader busy and "
            "the write idle would say the decoding does.",
            "",
        ]
    )  # fmt: skip


def run() -> str:
    return measure()


def main() -> None:
    parser = argparse.ArgumentParser(description="The sink service's throughput from its topic.")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"rounds (default {RUNS})")
    print(measure(parser.parse_args().runs))


if __name__ == "__main__":
    main()
