"""Integration: the batch writer on the real PostgreSQL, both ways (COPY and unnest): upserts
keyed by (server, time), the row with the most samples wins, and a rejected row is isolated
while the rest lands."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import asyncpg
import pytest

from infra.db import migrate
from schemas import Resolution
from sinks.rows import TABLES, to_row
from sinks.writer import BatchWriter, Item, write_isolating
from tests.factories import ROW_T0, SERVER_ID, add_server, aggregate

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(app_conn: asyncpg.Connection) -> asyncpg.Connection:
    """A fresh database of the test's own, migrated."""
    await migrate(app_conn)
    return app_conn


SNAPSHOTS = TABLES[Resolution.FIVE_SECONDS.value]
METHODS = ["copy", "unnest"]


async def _rows(conn: asyncpg.Connection) -> dict[object, tuple[int, float]]:
    rows = await conn.fetch(
        'SELECT "timestamp", sample_count, cpu_usage FROM metrics_snapshots ORDER BY 1'
    )
    return {r["timestamp"]: (r["sample_count"], r["cpu_usage"]) for r in rows}


@pytest.mark.parametrize("method", METHODS)
async def test_upserts_and_the_row_with_the_most_samples_wins(
    db: asyncpg.Connection, method: Literal["copy", "unnest"]
) -> None:
    conn = db
    await add_server(conn, SERVER_ID)
    writer = BatchWriter(method)
    t1 = ROW_T0 + timedelta(seconds=5)
    first = [to_row(aggregate(SERVER_ID, ROW_T0, count=3, cpu=10.0))]
    await writer.upsert(conn, SNAPSHOTS, first)
    # One batch holding the same key twice, and a smaller replay of the first row.
    await writer.upsert(
        conn,
        SNAPSHOTS,
        [
            to_row(aggregate(SERVER_ID, ROW_T0, count=5, cpu=20.0)),
            to_row(aggregate(SERVER_ID, ROW_T0, count=4, cpu=30.0)),
            to_row(aggregate(SERVER_ID, t1, count=5, cpu=40.0)),
        ],
    )
    await writer.upsert(conn, SNAPSHOTS, [to_row(aggregate(SERVER_ID, ROW_T0, count=2))])
    assert await _rows(conn) == {ROW_T0: (5, 20.0), t1: (5, 40.0)}


@pytest.mark.parametrize("method", METHODS)
async def test_a_rejected_row_is_isolated_and_the_rest_lands(
    db: asyncpg.Connection, method: Literal["copy", "unnest"]
) -> None:
    conn = db
    await add_server(conn, SERVER_ID)
    unknown = "00000000-0000-4000-8000-000000000000"  # no such server: a foreign-key error
    items = [
        Item(to_row(aggregate(sid, ROW_T0 + timedelta(seconds=5 * i))), i)
        for i, sid in enumerate([SERVER_ID] * 6 + [unknown] + [SERVER_ID] * 9)
    ]
    async with conn.transaction():
        rejected = await write_isolating(BatchWriter(method), conn, SNAPSHOTS, items)
    assert [item.source for item, _ in rejected] == [6]
    assert isinstance(rejected[0][1], asyncpg.ForeignKeyViolationError)
    assert len(await _rows(conn)) == 15


async def test_copy_goes_straight_to_the_table_until_a_key_is_there(
    db: asyncpg.Connection,
) -> None:
    conn = db
    await add_server(conn, SERVER_ID)
    writer = BatchWriter("copy")
    at = [ROW_T0 + timedelta(seconds=5 * i) for i in range(4)]
    await writer.upsert(conn, SNAPSHOTS, [to_row(aggregate(SERVER_ID, at[0], count=3))])
    assert (writer.straight, writer.conflicts) == (1, 0)
    # A batch with a key already there: the straight COPY leaves nothing, the upsert lands it.
    replay = [to_row(aggregate(SERVER_ID, t, count=5, cpu=20.0)) for t in at[:2]]
    await writer.upsert(conn, SNAPSHOTS, replay)
    assert (writer.straight, writer.conflicts) == (1, 1)
    assert await _rows(conn) == {at[0]: (5, 20.0), at[1]: (5, 20.0)}
    # For a while after a conflict, batches take the staging way without trying.
    await writer.upsert(conn, SNAPSHOTS, [to_row(aggregate(SERVER_ID, at[2]))])
    assert (writer.straight, writer.conflicts) == (1, 1)
    writer.straight_after = 0.0  # the pause over
    await writer.upsert(conn, SNAPSHOTS, [to_row(aggregate(SERVER_ID, at[3]))])
    assert (writer.straight, writer.conflicts) == (2, 1)
    assert len(await _rows(conn)) == 4
