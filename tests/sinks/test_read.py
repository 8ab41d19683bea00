"""Integration: the read path's gap filling, on plain PostgreSQL and on the TimescaleDB stand-in,
and the write methods (COPY staging vs unnest) giving the same rows."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import asyncpg
import pytest

from infra.db import migrate
from schemas import Resolution
from sinks.read import ReadError, read_series
from sinks.rows import LATE_SAMPLES, TABLES, to_row
from sinks.writer import BatchWriter, Item, write_isolating
from tests.factories import ROW_T0 as T0
from tests.factories import add_server, aggregate

pytestmark = pytest.mark.integration

SNAPSHOTS = TABLES[Resolution.FIVE_SECONDS]
SID = "6f1c2a8e-4b7d-4e0a-9c35-0d2f5b8e91a4"


async def _load(conn: asyncpg.Connection, writer: BatchWriter) -> None:
    """Minute 0: 12 windows; minute 1: nothing (a gap); minute 2: 6 windows; minute 3: 1."""
    await add_server(conn, SID)
    rows = []
    for i in range(12):
        rows.append(to_row(aggregate(SID, T0 + timedelta(seconds=5 * i), cpu=10.0, count=5)))
    for i in range(6):
        cpu = 20.0 if i < 3 else 50.0
        rows.append(
            to_row(
                aggregate(
                    SID, T0 + timedelta(minutes=2, seconds=5 * i), cpu=cpu, count=5 if i < 3 else 1
                )
            )
        )
    rows.append(to_row(aggregate(SID, T0 + timedelta(minutes=3), cpu=99.0, count=2, rx=7)))
    async with conn.transaction():
        await writer.upsert(conn, SNAPSHOTS, rows)
        hour_2 = T0 + timedelta(hours=2)
        hourly = [
            aggregate(SID, T0, Resolution.ONE_HOUR, count=3600, cpu=12.0),
            aggregate(SID, hour_2, Resolution.ONE_HOUR, count=1800, cpu=30.0),
        ]
        await writer.upsert(conn, TABLES[Resolution.ONE_HOUR], [to_row(a) for a in hourly])
        day = aggregate(SID, T0.replace(hour=0), Resolution.ONE_DAY, cpu=5.0)
        await writer.upsert(conn, TABLES[Resolution.ONE_DAY], [to_row(day)])


async def _check_series(conn: asyncpg.Connection) -> None:
    minutes = await read_series(conn, SID, T0, T0 + timedelta(minutes=5), "1m")
    assert [p.bucket for p in minutes] == [T0 + timedelta(minutes=m) for m in range(5)]
    assert [p.samples for p in minutes] == [60, 0, 18, 2, 0]
    assert minutes[0].cpu_usage_avg == 10.0
    assert minutes[0].cpu_usage_min == 9.0 and minutes[0].cpu_usage_max == 11.0
    assert minutes[0].network_rx == 12 * 1000
    # The gap is there, as NULLs.
    assert minutes[1].cpu_usage_avg is None and minutes[1].network_rx is None
    assert minutes[4].memory_usage_avg is None
    # Weighted by samples: (3*5*20 + 3*1*50) / 18 = 25.
    assert minutes[2].cpu_usage_avg == pytest.approx(25.0)
    assert minutes[3].cpu_usage_avg == 99.0 and minutes[3].network_rx == 7

    five = await read_series(conn, SID, T0 - timedelta(minutes=5), T0 + timedelta(minutes=5), "5m")
    assert [p.samples for p in five] == [0, 80]
    assert five[1].cpu_usage_avg == pytest.approx((60 * 10 + 15 * 20 + 3 * 50 + 2 * 99) / 80)

    hours = await read_series(conn, SID, T0, T0 + timedelta(hours=4), "1h")
    assert [p.samples for p in hours] == [3600, 0, 1800, 0]
    assert [p.cpu_usage_avg for p in hours] == [12.0, None, 30.0, None]

    midnight = T0.replace(hour=0)
    days = await read_series(conn, SID, midnight - timedelta(days=1), T0, "1d")
    assert [p.cpu_usage_avg for p in days] == [None, 5.0]


async def test_gap_filled_series_on_postgres(app_conn: asyncpg.Connection) -> None:
    await migrate(app_conn, storage="postgres")
    await _load(app_conn, BatchWriter("copy"))
    await _check_series(app_conn)


async def test_gap_filled_series_on_timescaledb(ts_conn: asyncpg.Connection) -> None:
    await migrate(ts_conn)
    writer = BatchWriter("auto")
    writer.method = "copy"  # force the COPY attempt: the stand-in has no COPY, auto falls back
    await _load(ts_conn, writer)
    method_after: str = writer.method
    assert method_after == "unnest"
    await _check_series(ts_conn)


async def test_copy_and_unnest_write_the_same_rows(app_conn: asyncpg.Connection) -> None:
    await migrate(app_conn, storage="postgres")
    await add_server(app_conn, SID)
    rows = [to_row(aggregate(SID, T0 + timedelta(seconds=5 * i), cpu=i % 100)) for i in range(300)]
    results = []
    for method in ("copy", "unnest"):
        async with app_conn.transaction():
            await BatchWriter(method).upsert(app_conn, SNAPSHOTS, rows)
        got = await app_conn.fetch('SELECT * FROM metrics_snapshots ORDER BY "timestamp"')
        results.append([{**dict(r), "processes": json.loads(r["processes"])} for r in got])
        await app_conn.execute("TRUNCATE metrics_snapshots")
    assert results[0] == results[1] and len(results[0]) == 300


async def test_read_path_refuses_bad_requests(app_conn: asyncpg.Connection) -> None:
    await migrate(app_conn, storage="postgres")
    sid = str(uuid.uuid4())
    with pytest.raises(ReadError, match="step must be one of"):
        await read_series(app_conn, sid, T0, T0 + timedelta(hours=1), "10s")
    with pytest.raises(ReadError, match="after"):
        await read_series(app_conn, sid, T0, T0, "1m")
    with pytest.raises(ReadError, match="at most 10000"):
        await read_series(app_conn, sid, T0, T0 + timedelta(days=30), "1m")
    assert await read_series(app_conn, sid, T0, T0 + timedelta(minutes=2), "1m") != []


@pytest.mark.parametrize("method", ["copy", "unnest"])
async def test_rejected_row_is_isolated_and_the_next_batch_still_lands(
    app_conn: asyncpg.Connection, method: str
) -> None:
    await migrate(app_conn, storage="postgres")
    await add_server(app_conn, SID)
    writer = BatchWriter(method)  # type: ignore[arg-type]
    unknown = str(uuid.uuid4())
    items = [
        Item(to_row(aggregate(SID if i != 7 else unknown, T0 + timedelta(seconds=5 * i))), i)
        for i in range(20)
    ]
    async with app_conn.transaction():
        rejected = await write_isolating(writer, app_conn, SNAPSHOTS, items)
    assert [item.source for item, _ in rejected] == [7]
    assert isinstance(rejected[0][1], asyncpg.ForeignKeyViolationError)
    later = [
        Item(to_row(aggregate(SID, T0 + timedelta(minutes=5, seconds=5 * i))), i) for i in range(5)
    ]
    async with app_conn.transaction():
        assert await write_isolating(writer, app_conn, SNAPSHOTS, later) == []
    assert await app_conn.fetchval("SELECT count(*) FROM metrics_snapshots") == 24


async def _completeness(conn: asyncpg.Connection) -> None:
    """A server sends for 3 minutes, is offline for 10 (per its status changes), sends again;
    two samples of minute 1 came late and were dead-lettered; the rest of the range has no
    data and no status saying why. (A server of its own: the stand-in's database is shared.)"""
    sid = str(uuid.uuid4())
    await add_server(conn, sid)
    offset = uuid.uuid4().int % 2**40
    rows = [
        to_row(aggregate(sid, T0 + timedelta(seconds=5 * i)))
        for i in [*range(36), *range(156, 168)]  # minutes 0-2, then minute 13
    ]
    async with conn.transaction():
        await BatchWriter("unnest").upsert(conn, SNAPSHOTS, rows)
        await BatchWriter("unnest").upsert(
            conn,
            LATE_SAMPLES,
            [
                (0, offset, sid, T0 + timedelta(seconds=61)),
                (2, offset, sid, T0 + timedelta(seconds=75)),
            ],
        )
    last = T0 + timedelta(minutes=3) - timedelta(seconds=1)
    back = T0 + timedelta(minutes=13)
    await conn.executemany(
        "INSERT INTO server_status_history (server_id, changed_at, event_at, online) "
        "VALUES ($1, $2, $3, $4)",
        [
            (sid, T0 - timedelta(seconds=1), T0, True),
            (sid, last + timedelta(seconds=15), last, False),
            (sid, back + timedelta(seconds=1), back, True),
        ],
    )
    minutes = await read_series(conn, sid, T0, T0 + timedelta(minutes=16), "1m")
    assert [p.samples for p in minutes[:4]] == [60, 60, 60, 0]
    assert all(p.expected == 60 for p in minutes)
    assert [p.late for p in minutes[:3]] == [0, 2, 0]
    assert [p.gap for p in minutes] == [None] * 3 + ["offline"] * 10 + [None] + ["no_data"] * 2
    # The gap shows at coarser steps too (a bucket holding data has none).
    fives = await read_series(conn, sid, T0, T0 + timedelta(minutes=15), "5m")
    assert [(p.samples, p.gap, p.late) for p in fives] == [
        (180, None, 2),
        (0, "offline", 0),
        (60, None, 0),
    ]


async def test_completeness_per_bucket_on_postgres(app_conn: asyncpg.Connection) -> None:
    await migrate(app_conn, storage="postgres")
    await _completeness(app_conn)


async def test_completeness_per_bucket_on_timescaledb(ts_conn: asyncpg.Connection) -> None:
    await migrate(ts_conn)
    await _completeness(ts_conn)
