"""Sizing: the README's *Sizing* tables, derived from a few measured per-component figures.

    python -m benchmarks.sizing           # print the tables of README *Sizing* (markdown)
    python -m benchmarks.sizing measure   # measure disk bytes per row and per Kafka record

Every number in the tables comes from `FIGURES` (measured, each with where it was measured)
and `ASSUMPTIONS` (not measured here, each with its source): one place to update when a
benchmark improves, then paste the output over the README's tables.

`measure` loads realistic rows into a fresh database on the local PostgreSQL through the
sink's own writer (`sinks.writer.BatchWriter`, in 5,000-row batches in time order, as the sink
writes them): 5 s windows of simulated hosts, built by the stream worker's windowing
(`streams.windows.WindowAcc`) from the simulator's events, with 3 processes (the simulator's
default) and 10 (the agent's `top_processes` default); hourly and daily rows the same way. After
`VACUUM ANALYZE` it divides `pg_total_relation_size` of the table's partitions (heap, TOAST,
indexes) by the rows. It also writes raw events and 5 s aggregates to fresh topics on the
local broker and divides the bytes of their log segments by the records: raw events one per
batch (as an agent sends them, one host a second) and in batches (as the simulator does), and
aggregates with the stream worker's producer settings.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from benchmarks.common import (
    WINDOW,
    bench_database,
    drop_database,
    drop_topics,
    machine,
    register_servers,
    stack_up,
)
from infra.db import migrate
from infra.settings import StackSettings
from producers import MetricProducer, SimulatorSettings
from producers.simulator import SimulatedHost, fleet, iso_second
from runtime import kafka
from runtime.topics import create_topics
from schemas import Resolution
from schemas.messages import decode_raw_event, decode_window_aggregate
from schemas.topics import TopicSpec
from sinks.rows import TABLES, to_row
from sinks.writer import BatchWriter
from streams.settings import StreamSettings
from streams.windows import WindowAcc

# -- the figures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One input of the sizing: its value, what it is, and where it comes from."""

    value: float
    what: str
    source: str
    fmt: str = "{:,.0f}"


_STREAM = "BENCHMARKS.md *Stream worker* (2026-12-02 06:52 UTC)"
_SINK = "BENCHMARKS.md *Sink service* (2026-12-02 06:41 UTC)"
_TLS = "BENCHMARKS.md *TLS and SCRAM: what they cost*, pipeline (2026-12-01 21:33 UTC)"
_BYTES = "`python -m benchmarks.sizing measure` (2026-12-02 05:31 UTC, other load present)"

#: Measured per-component figures, all on one machine: Intel Xeon, 2 cores, 24 GiB RAM,
#: Linux 6.18, Python 3.11.7, PostgreSQL 15 and one Kafka broker on the same cores, TLS and
#: SCRAM throughout.
FIGURES: dict[str, Figure] = {
    "stream": Figure(
        30_042,
        "Stream worker, events/s (sustained through a backlog, all resolutions)",
        _STREAM,
    ),
    "kept": Figure(
        0.30,
        "Stream worker memory per server, MiB (its windows kept for the default 1 h "
        "lateness horizon)",
        "README *Lateness* (3 processes per event)",
        "{:.2f}",
    ),
    "sink": Figure(21_884, "Sink, 5 s rows/s (sustained through a backlog)", _SINK),
    "copy": Figure(42_286, "PostgreSQL bulk load (`psql \\copy`, no upsert), rows/s", _SINK),
    "broker": Figure(
        9.58,
        "Broker CPU, % of one core, at 5,000 events/s through the whole pipeline "
        "(one broker, nothing replicated)",
        _TLS,
        "{:.2f}",
    ),
    "row_5s": Figure(
        1_455.2,
        "`metrics_snapshots` row, bytes on disk incl. indexes, 10 processes (agent default)",
        _BYTES,
        "{:,.1f}",
    ),
    "row_5s_3": Figure(620.4, "the same, 3 processes (simulator default)", _BYTES, "{:,.1f}"),
    "row_1h": Figure(268.1, "`metrics_hourly` row, bytes incl. indexes", _BYTES, "{:,.1f}"),
    "row_1d": Figure(257.0, "`metrics_daily` row, bytes incl. indexes", _BYTES, "{:,.1f}"),
    "raw_record": Figure(
        547.2,
        "Raw event on the broker's disk, bytes (10 processes, one event per batch, as an "
        "agent sends)",
        _BYTES,
        "{:,.1f}",
    ),
    "agg_record": Figure(
        223.0,
        "5 s aggregate on the broker's disk, bytes (the worker's zstd batches)",
        _BYTES,
        "{:,.1f}",
    ),
}

#: Not measured here: each with its source.
ASSUMPTIONS: dict[str, Figure] = {
    "headroom": Figure(
        2,
        "Headroom: each worker and sink planned at 1/2 of its measured rate (room to catch "
        "up after an outage at the live rate plus as much again, or to take a lost peer's "
        "share)",
        "a choice; change it here",
    ),
    "compression": Figure(
        10,
        "TimescaleDB compression ratio (compressed chunk = 1/10 of the plain one); NOT "
        "measured here (TimescaleDB cannot be installed on this machine)",
        "Timescale's documentation: compression reduces a chunk by more than 90 % "
        "(tigerdata.com/docs/use-timescale/latest/compression/about-compression), "
        "hypercore typically 90-98 % (tigerdata.com/docs/build/how-to/basic-compression); "
        "the low end taken. Our JSONB `processes` column may compress less than numbers",
    ),
    "replication": Figure(
        3, "Kafka replication factor", "`fleetpulse stack up --brokers 3`, DESIGN.md"
    ),
    "broker_cores": Figure(8, "Cores per broker machine", "a choice; change it here"),
}

# -- measuring bytes per row ---------------------------------------------------------------

#: Hosts and 5 s windows per host of the measured load (100,000 5 s rows).
MEASURE_HOSTS = 1_000
MEASURE_WINDOWS = 100
#: Hourly and daily rows per host.
MEASURE_HOURS = 48
MEASURE_DAYS = 30
#: Samples put into each measured rollup (their count does not change a row's width).
ROLLUP_SAMPLES = 12
BATCH = 5_000
SEED = 11


def _sink_row(acc: WindowAcc, resolution: Resolution, emitted: str) -> tuple[object, ...]:
    """The row the sink writes for `acc`: its message as the worker sends it, decoded as the
    sink decodes it."""
    return to_row(decode_window_aggregate(acc.to_json_bytes(resolution, emitted)))


def _window(h: SimulatedHost, start: int) -> WindowAcc:
    """Host `h`'s 5 s window from `start`, as the stream worker builds it from its events."""
    acc: WindowAcc | None = None
    for t in range(start, start + WINDOW):
        e = decode_raw_event(h.event_json(t, iso_second(t)))
        if acc is None:
            acc = WindowAcc.from_event(e, start, WINDOW, 0)
        else:
            acc.add(e, 0, float(t))
    assert acc is not None
    return acc


def _five_second_rows(hosts: list[SimulatedHost], t0: int) -> list[tuple[object, ...]]:
    """Each host's 5 s windows from `t0`, in time order (a window of all hosts, then the next),
    as the stream worker builds them from the simulator's events and the sink writes them."""
    rows = []
    emitted = iso_second(int(datetime.now(UTC).timestamp()))
    for w in range(MEASURE_WINDOWS):
        start = t0 + w * WINDOW
        for h in hosts:
            rows.append(_sink_row(_window(h, start), Resolution.FIVE_SECONDS, emitted))
    return rows


def _rollup_rows(
    hosts: list[SimulatedHost], resolution: Resolution, t0: int, windows: int
) -> list[tuple[object, ...]]:
    """`windows` rollups of `resolution` per host from `t0`, in time order, each from
    `ROLLUP_SAMPLES` of the simulator's samples spread over the window."""
    size = resolution.seconds
    rows = []
    emitted = iso_second(int(datetime.now(UTC).timestamp()))
    for w in range(windows):
        start = t0 + w * size
        for h in hosts:
            acc: WindowAcc | None = None
            for k in range(ROLLUP_SAMPLES):
                t = start + k * (size // ROLLUP_SAMPLES)
                e = decode_raw_event(h.event_json(t, iso_second(t)))
                if acc is None:
                    acc = WindowAcc.from_event(e, start, size, 0, rollup=True)
                else:
                    acc.add(e, 0, float(t))
            assert acc is not None
            rows.append(_sink_row(acc, resolution, emitted))
    return rows


async def _table_bytes(conn: asyncpg.Connection, table: str) -> dict[str, int]:
    """Bytes of `table`'s partitions: all of it (heap, TOAST, free space and visibility maps,
    indexes), and the indexes alone."""
    found = await conn.fetchrow(
        "SELECT sum(pg_total_relation_size(relid))::bigint, "
        "sum(pg_indexes_size(relid))::bigint "
        "FROM pg_partition_tree($1::regclass) WHERE isleaf",
        table,
    )
    assert found is not None
    return {"total": int(found[0] or 0), "indexes": int(found[1] or 0)}


async def _measure_rows(settings: StackSettings, processes: int) -> dict[str, tuple[int, int, int]]:
    """Per table: (rows, total bytes, index bytes) after loading hosts with `processes`
    processes each into a fresh database."""
    name = await bench_database(settings)
    conn = await asyncpg.connect(**settings.connect_kwargs(database=name))
    try:
        await migrate(conn, storage="postgres")
        await register_servers(conn, SEED, MEASURE_HOSTS)
        hosts = fleet(SEED, MEASURE_HOSTS, processes)
        now = int(datetime.now(UTC).timestamp())
        loads = {
            Resolution.FIVE_SECONDS: _five_second_rows(hosts, (now - 86400) // 3600 * 3600),
            Resolution.ONE_HOUR: _rollup_rows(
                hosts, Resolution.ONE_HOUR, (now - 3 * 86400) // 86400 * 86400, MEASURE_HOURS
            ),
            Resolution.ONE_DAY: _rollup_rows(
                hosts, Resolution.ONE_DAY, (now - 40 * 86400) // 86400 * 86400, MEASURE_DAYS
            ),
        }
        writer = BatchWriter("auto")
        for resolution, rows in loads.items():
            for i in range(0, len(rows), BATCH):
                async with conn.transaction():
                    await writer.upsert(conn, TABLES[resolution], rows[i : i + BATCH])
        await conn.execute("VACUUM ANALYZE")
        out = {}
        for resolution, rows in loads.items():
            table = TABLES[resolution].name
            n = await conn.fetchval(f"SELECT count(*) FROM {table}")
            assert n == len(rows), f"{table}: {n} rows of {len(rows)}"
            size = await _table_bytes(conn, table)
            out[resolution.value] = (n, size["total"], size["indexes"])
        return out
    finally:
        await conn.close()
        await drop_database(settings, name)


def _log_bytes(settings: StackSettings, topic: str) -> int:
    """Bytes of `topic`'s log segments on the local broker's disk (one replica)."""
    data = settings.home_dir / "kafka" / "data"
    return sum(f.stat().st_size for d in data.glob(f"{topic}-*") for f in d.glob("*.log"))


async def _measure_kafka(settings: StackSettings) -> dict[str, tuple[int, int]]:
    """Per way of writing: (records, bytes of log segments)."""
    bootstrap = settings.kafka_bootstrap
    tag = uuid.uuid4().hex[:8]
    topics = {k: f"bench.sizing.{k}.{tag}" for k in ("agent", "batched", "agg5s")}
    await create_topics(settings, [TopicSpec(t, 1, 3_600_000) for t in topics.values()])
    out: dict[str, tuple[int, int]] = {}
    try:
        hosts = fleet(SEED, MEASURE_HOSTS, 10)
        t0 = int(datetime.now(UTC).timestamp()) - 3600
        sim = SimulatorSettings(kafka_bootstrap=bootstrap, hosts=MEASURE_HOSTS)
        # An agent: one host's event a second, so each batch holds one record.
        n = 2_000
        async with MetricProducer(sim, topic=topics["agent"]) as producer:
            for i in range(n):
                h = hosts[i % len(hosts)]
                producer.send_encoded(h.server_id, h.event_json(t0 + i, iso_second(t0 + i)))
                assert await producer.flush(30)
        out["raw, one event per batch (agent)"] = (n, n)
        # The simulator: a second of the whole fleet at once.
        n = MEASURE_HOSTS * 100
        async with MetricProducer(sim, topic=topics["batched"]) as producer:
            for t in range(t0, t0 + 100):
                ts = iso_second(t)
                for h in hosts:
                    producer.send_encoded(h.server_id, h.event_json(t, ts))
                await asyncio.sleep(0)
            assert await producer.flush(120)
        out["raw, batched (simulator)"] = (n, n)
        # The stream worker's 5 s aggregates, with its producer settings (zstd).
        emitted = iso_second(t0 + 3600)
        producer5 = kafka.producer(StreamSettings(kafka_bootstrap=bootstrap), "sizing")
        await producer5.start()
        try:
            n = 0
            for w in range(20):
                start = t0 + w * WINDOW
                for h in hosts:
                    value = _window(h, start).to_json_bytes(Resolution.FIVE_SECONDS, emitted)
                    await producer5.send(topics["agg5s"], value, key=h.server_id.encode())
                    n += 1
            await producer5.flush()
        finally:
            await producer5.stop()
        out["5 s aggregates (stream worker, 10 processes)"] = (n, n)
        await asyncio.sleep(2)  # the broker's writes reach the segment files
        return {
            label: (n, _log_bytes(settings, t))
            for (label, (n, _)), t in zip(out.items(), topics.values(), strict=True)
        }
    finally:
        await drop_topics(bootstrap, list(topics.values()))


def measure() -> str:
    """Bytes per row in PostgreSQL and per record on the broker's disk, as markdown."""
    settings = stack_up()
    lines = [
        f"Machine: {machine()}.",
        "",
        "| Table, processes per 5 s row | Rows | Bytes per row, all | of which indexes |",
        "| --- | ---: | ---: | ---: |",
    ]
    for processes in (3, 10):
        for table, (n, total, indexes) in asyncio.run(_measure_rows(settings, processes)).items():
            lines.append(
                f"| {table}, {processes} | {n:,} | {total / n:,.1f} | {indexes / n:,.1f} |"
            )
    lines += ["", "| Kafka records | Records | Bytes per record on disk |", "| --- | ---: | ---: |"]
    for label, (n, size) in asyncio.run(_measure_kafka(settings)).items():
        lines.append(f"| {label} | {n:,} | {size / n:,.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sizing",
        description="Print the README's sizing tables, or measure bytes per row.",
    )
    parser.add_argument("command", nargs="?", choices=["measure"])
    if parser.parse_args().command == "measure":
        print(measure())
        return
    print(tables(), end="")


FLEETS = (1_000, 10_000, 100_000, 1_000_000)
#: Days each table keeps rows (`schemas/resolutions.py`), and after how many days a
#: TimescaleDB chunk is compressed (`infra/db/sql/0003_metrics.timescaledb.sql`; daily rows
#: are not compressed).
RETENTION = {"5s": 30, "1h": 400}
COMPRESS_AFTER = {"5s": 7, "1h": 60}
#: Days of raw and 5 s aggregate records a broker keeps (`schemas/topics.py`,
#: `schemas/resolutions.py`).
RAW_TOPIC_DAYS = 1
AGG_TOPIC_DAYS = 7
DAY = 86_400


def _f(name: str) -> float:
    return (FIGURES | ASSUMPTIONS)[name].value


def size(n: float) -> str:
    """Bytes, decimal units, three significant digits."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 999.5 or unit == "PB":
            return f"{n:.3g} {unit}" if n >= 1 else f"{n:.2g} {unit}"
        n /= 1000
    raise AssertionError


def rows_per_s(hosts: int) -> dict[str, float]:
    """Rows written per second per table at one sample a second per host."""
    return {"5s": hosts / 5, "1h": hosts / 3600, "1d": hosts / DAY}


def per_day(hosts: int) -> dict[str, float]:
    """Bytes a day of a fleet adds to each table, uncompressed."""
    rows = rows_per_s(hosts)
    return {r: rows[r] * DAY * _f(f"row_{r}") for r in rows}


def held(hosts: int) -> dict[str, tuple[float, float]]:
    """Bytes each table holds at its retention (daily: after a year), plain and with
    TimescaleDB compression after `COMPRESS_AFTER` days."""
    day = per_day(hosts)
    ratio = _f("compression")
    out = {}
    for r, days in RETENTION.items():
        fresh = min(days, COMPRESS_AFTER[r])
        out[r] = (day[r] * days, day[r] * fresh + day[r] * (days - fresh) / ratio)
    out["1d"] = (day["1d"] * 365, day["1d"] * 365)
    return out


@dataclass(frozen=True)
class Services:
    workers: int
    worker_memory: float  # MiB each
    raw_partitions: int
    sinks: int
    agg_partitions: int
    broker_cores: float
    brokers: int
    raw_in: float  # bytes/s into the raw topic
    broker_disk: float  # bytes held by all brokers (every replica)
    pg_share: float  # rows/s over the measured PostgreSQL's bulk-load rate


def services(hosts: int) -> Services:
    events = hosts * 1.0
    headroom = _f("headroom")
    workers = math.ceil(events * headroom / _f("stream"))
    rows = sum(rows_per_s(hosts).values())
    sinks = math.ceil(rows * headroom / _f("sink"))
    rf = _f("replication")
    cores = events * _f("broker") / 100 / 5_000 * rf * headroom
    disk = (
        rf
        * DAY
        * (
            events * _f("raw_record") * RAW_TOPIC_DAYS
            + rows_per_s(hosts)["5s"] * _f("agg_record") * AGG_TOPIC_DAYS
        )
    )
    return Services(
        workers=workers,
        worker_memory=_f("kept") * hosts / workers,
        raw_partitions=max(6, 2 * workers),
        sinks=sinks,
        agg_partitions=max(6, 2 * sinks),
        broker_cores=cores,
        brokers=max(int(rf), math.ceil(cores / _f("broker_cores"))),
        raw_in=events * _f("raw_record"),
        broker_disk=disk,
        pg_share=rows / _f("copy"),
    )


def _table(head: list[str], rows: list[list[str]], numbers: slice = slice(1, None)) -> list[str]:
    """A markdown table, the `numbers` columns right-aligned."""
    right = set(range(len(head))[numbers])
    align = ["---:" if i in right else "---" for i in range(len(head))]
    return [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def tables() -> str:
    """The README's sizing tables (markdown), from `FIGURES` and `ASSUMPTIONS`."""
    lines = _table(
        ["Figure", "Value", "Measured in"],
        [[f.what, f.fmt.format(f.value), f.source] for f in FIGURES.values()],
        numbers=slice(1, 2),
    )
    lines += [
        "",
        *_table(
            ["Assumption", "Value", "Source"],
            [[f.what, f.fmt.format(f.value), f.source] for f in ASSUMPTIONS.values()],
            numbers=slice(1, 2),
        ),
    ]
    svc = []
    for hosts in FLEETS:
        s = services(hosts)
        svc.append(
            [
                f"{hosts:,}",
                f"{hosts:,}",
                str(s.workers),
                f"{s.worker_memory / 1024:.1f} GiB",
                str(s.raw_partitions),
                str(s.sinks),
                str(s.agg_partitions),
                f"{s.broker_cores:.1f}",
                str(s.brokers),
                f"{size(s.raw_in)}/s",
                size(s.broker_disk),
                f"{s.pg_share:.2f}",
            ]
        )
    lines += [
        "",
        *_table(
            [
                "Hosts",
                "Events/s",
                "Stream workers",
                "Kept windows per worker",
                "Raw partitions",
                "Sinks",
                "5 s topic partitions",
                "Broker cores",
                "Brokers",
                "Into the raw topic",
                "Kafka disk held (all replicas)",
                "PostgreSQL rows/s ÷ measured COPY rate",
            ],
            svc,
        ),
    ]
    pg = []
    for hosts in FLEETS:
        rows = rows_per_s(hosts)
        day = per_day(hosts)
        ratio = _f("compression")
        pg.append(
            [
                f"{hosts:,}",
                f"{rows['5s']:,.0f}",
                f"{rows['1h']:,.1f}",
                f"{rows['1d']:,.2f}",
                size(day["5s"]),
                size(day["5s"] / ratio),
                size(day["1h"]),
                size(day["1h"] / ratio),
                size(day["1d"]),
            ]
        )
    lines += [
        "",
        *_table(
            [
                "Hosts",
                "5 s rows/s",
                "Hourly rows/s",
                "Daily rows/s",
                "5 s a day",
                "5 s a day, compressed*",
                "Hourly a day",
                "Hourly a day, compressed*",
                "Daily a day",
            ],
            pg,
        ),
    ]
    kept = []
    for hosts in FLEETS:
        h = held(hosts)
        total = [sum(v[i] for v in h.values()) for i in (0, 1)]
        kept.append(
            [
                f"{hosts:,}",
                size(h["5s"][0]),
                size(h["5s"][1]),
                size(h["1h"][0]),
                size(h["1h"][1]),
                size(h["1d"][0]),
                size(total[0]),
                size(total[1]),
            ]
        )
    lines += [
        "",
        *_table(
            [
                "Hosts",
                "5 s, 30 days",
                "5 s, 30 days, TimescaleDB*",
                "Hourly, 400 days",
                "Hourly, 400 days, TimescaleDB*",
                "Daily, per year kept",
                "Total (daily: 1 year)",
                "Total, TimescaleDB*",
            ],
            kept,
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
