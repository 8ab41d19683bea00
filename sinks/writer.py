"""Batch upserts into the metric tables, and isolation of the rows the database rejects.

Two ways to move a batch, both ending in `INSERT … ON CONFLICT (server_id, time) DO UPDATE`
so that writing the same aggregate twice changes nothing, and a correction of a window (more
samples) replaces its row while an earlier revision (fewer) never does:
- `copy`: COPY the rows into a session-private staging table, then upsert from it. Most
  batches hold only new keys (a window is written once unless corrected or replayed), so the
  rows are first COPYed straight into the table under a savepoint, half the database's work;
  a key already there makes that COPY fail whole, and the batch goes the staging way. After
  such a conflict (a replay, a run of corrections) the staging way is taken for
  `CONFLICT_PAUSE` seconds before trying straight again.
- `unnest`: one `INSERT … SELECT FROM unnest($1::type[], …)` with an array per column.
Which is faster is measured by `benchmarks/sink_write.py` (BENCHMARKS.md); `auto` uses that
one and falls back to `unnest` for good where COPY is not available (the TimescaleDB test
stand-in, for one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Generic, Literal, TypeVar

import asyncpg

from runtime import postgres
from runtime.errors import Disposition
from sinks.rows import TableSpec

log = logging.getLogger(__name__)

T = TypeVar("T")
Method = Literal["copy", "unnest"]

#: The faster method on this project's benchmark (BENCHMARKS.md, "Sink write path": COPY took
#: 0.68x and 0.76x the time of unnest for 5,000 new rows in two runs).
FASTEST: Method = "copy"

#: Seconds of staging-only writes after a straight COPY met a key already in the table.
CONFLICT_PAUSE = 30.0


def _upsert_sql(table: TableSpec, source: str) -> str:
    cols = ", ".join(f'"{c}"' for c in table.names)
    key = ", ".join(f'"{c}"' for c in table.key)
    updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in table.names if c not in table.key)
    if table.keep_first:
        return f"INSERT INTO {table.name} ({cols}) {source} ON CONFLICT ({key}) DO NOTHING"
    # A window's statistics only grow with its samples: a correction (a later revision) has
    # at least the samples of the row it replaces. An earlier revision seen again after the
    # stream's replay has fewer, and must not put the row back until the replay catches up.
    return (
        f"INSERT INTO {table.name} ({cols}) {source} ON CONFLICT ({key}) DO UPDATE SET {updates} "
        f'WHERE {table.name}."sample_count" <= EXCLUDED."sample_count"'
    )


def _unnest_sql(table: TableSpec) -> str:
    # An array column travels as the text of each array (unnest would flatten an array of
    # arrays), cast back per row.
    args = ", ".join(
        f"${i}::{'text' if t.endswith('[]') else t}[]"
        for i, (_, t) in enumerate(table.columns, start=1)
    )
    names = ", ".join(f'"{c}"' for c in table.names)
    select = ", ".join(f'"{c}"::{t}' if t.endswith("[]") else f'"{c}"' for c, t in table.columns)
    return _upsert_sql(table, f"SELECT {select} FROM unnest({args}) AS u({names})")


def _unnest_args(table: TableSpec, rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """One array per column, for `_unnest_sql` (array values as their text)."""
    columns = [list(col) for col in zip(*rows, strict=True)]
    for i, (_, t) in enumerate(table.columns):
        if t.endswith("[]"):
            columns[i] = [None if v is None else f"{{{','.join(map(str, v))}}}" for v in columns[i]]
    return columns


def _stage_name(table: TableSpec) -> str:
    return f"fleetpulse_stage_{table.name}"


class BatchWriter:
    """Upserts batches of rows over one connection, with the chosen method."""

    def __init__(
        self, method: Literal["auto", "copy", "unnest"] = "auto", straight: bool = True
    ) -> None:
        """`straight`: with `copy`, first try each batch as a COPY into the table itself."""
        self.auto = method == "auto"
        self.try_straight = straight
        self.method: Method = FASTEST if method == "auto" else method
        #: Batches COPYed straight into their table, and those that met a key already there.
        self.straight = 0
        self.conflicts = 0
        #: Monotonic time from which a straight COPY is tried again.
        self.straight_after = 0.0

    async def upsert(
        self, conn: asyncpg.Connection, table: TableSpec, rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """Write `rows` (one per key: the most samples, then the last, wins). Raises what
        PostgreSQL raises."""
        rows = _last_per_key(table, rows)
        if not rows:
            return
        if self.method == "copy":
            try:
                async with conn.transaction():  # a savepoint: a failed COPY leaves no trace
                    if not await self._copy_straight(conn, table, rows):
                        await self._copy(conn, table, rows)
                return
            except asyncpg.FeatureNotSupportedError:
                if not self.auto:
                    raise
                log.warning(
                    "COPY is not available on this database; writing with unnest from now on"
                )
                self.method = "unnest"
        await conn.execute(_unnest_sql(table), *_unnest_args(table, rows))

    async def _copy_straight(
        self, conn: asyncpg.Connection, table: TableSpec, rows: Sequence[tuple[Any, ...]]
    ) -> bool:
        """COPY `rows` into the table itself, if none of their keys is there yet: whether it
        did (a conflict leaves nothing behind, under its savepoint)."""
        if not self.try_straight or time.monotonic() < self.straight_after:
            return False
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(table.name, records=rows, columns=table.names)
        except asyncpg.UniqueViolationError:
            self.conflicts += 1
            self.straight_after = time.monotonic() + CONFLICT_PAUSE
            return False
        self.straight += 1
        return True

    async def _copy(
        self, conn: asyncpg.Connection, table: TableSpec, rows: Sequence[tuple[Any, ...]]
    ) -> None:
        stage = _stage_name(table)
        # Every time, not once per session: a savepoint rolled back after a rejected row
        # takes a staging table created inside it along.
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
            f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS; TRUNCATE {stage}"
        )
        await conn.copy_records_to_table(stage, records=rows, columns=table.names)
        cols = ", ".join(f'"{c}"' for c in table.names)
        await conn.execute(_upsert_sql(table, f"SELECT {cols} FROM {stage}"))


class Item(Generic[T]):
    """A row and where it came from (so a rejected row can be dead-lettered)."""

    __slots__ = ("row", "source")

    def __init__(self, row: tuple[Any, ...], source: T) -> None:
        self.row = row
        self.source = source


async def write_isolating(
    writer: BatchWriter, conn: asyncpg.Connection, table: TableSpec, items: Sequence[Item[T]]
) -> list[tuple[Item[T], BaseException]]:
    """Write `items` inside the caller's transaction; return those the database rejects.

    The batch is tried whole; on a permanent error it is split in halves, each under its own
    savepoint, down to the single rows at fault, so one bad row costs O(log n) statements and
    the rest lands. A transient error is raised: the caller retries the whole batch.
    """
    if not items:
        return []
    try:
        async with conn.transaction():
            await writer.upsert(conn, table, [i.row for i in items])
        return []
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if postgres.disposition(exc) is Disposition.TRANSIENT:
            raise
        if len(items) == 1:
            return [(items[0], exc)]
    mid = len(items) // 2
    return await write_isolating(writer, conn, table, items[:mid]) + await write_isolating(
        writer, conn, table, items[mid:]
    )


def _last_per_key(table: TableSpec, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One row per key (an upsert cannot touch a row twice in one statement): the one with
    the most samples, the last given of those (the same rule as the upsert's); of a table
    that keeps the first, the first."""
    seen: dict[tuple[Any, Any], tuple[Any, ...]] = {}
    if table.keep_first:
        for row in rows:
            seen.setdefault((row[0], row[1]), row)
    else:
        n = table.names.index("sample_count")
        for row in rows:
            key = (row[0], row[1])
            held = seen.get(key)
            if held is None or held[n] <= row[n]:
                seen[key] = row
    if len(seen) == len(rows):
        return list(rows)
    return list(seen.values())
