"""Sink write path: COPY straight into the table (the sink's first try), COPY into a staging
table then upsert, and one INSERT … SELECT FROM unnest(…) upsert. 5,000-row batches of 5 s rows
into `metrics_snapshots` on the local PostgreSQL (TLS), new rows and rewrites of existing rows,
methods interleaved round by round. A rewrite through `copy` pays for the straight COPY that
fails on the first key already there, then the staging upsert.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from benchmarks.common import WINDOW, bench_database, drop_database, row, stack_up
from infra.db import migrate
from infra.settings import StackSettings
from schemas import Resolution
from sinks.rows import TABLES, to_row
from sinks.writer import BatchWriter
from tests.factories import aggregate

SNAPSHOTS = TABLES[Resolution.FIVE_SECONDS]
BATCH = 5000
ROUNDS = 7
SERVERS = 500


async def _measure(settings: StackSettings) -> dict[str, dict[str, list[float]]]:
    name = await bench_database(settings)
    conn = await asyncpg.connect(**settings.connect_kwargs(database=name))
    try:
        await migrate(conn, storage="postgres")
        servers = [str(uuid.uuid4()) for _ in range(SERVERS)]
        await conn.executemany(
            "INSERT INTO servers (id, name, hostname, port, username, encrypted_password) "
            "VALUES ($1, 'b', $1, 22, 'u', 'v1:x')",
            [(s,) for s in servers],
        )
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        writers = {
            "copy": BatchWriter("copy"),
            "copy, staging only": BatchWriter("copy", straight=False),
            "unnest": BatchWriter("unnest"),
        }
        results: dict[str, dict[str, list[float]]] = {
            m: {"insert": [], "rewrite": []} for m in writers
        }
        window = 0
        for _ in range(ROUNDS):
            for method, writer in writers.items():
                rows = []
                for i in range(BATCH):
                    at = start + timedelta(seconds=WINDOW * (window + i // SERVERS))
                    rows.append(to_row(aggregate(servers[i % SERVERS], at)))
                window += BATCH // SERVERS
                for kind in ("insert", "rewrite"):
                    writer.straight_after = 0.0  # no pause after the last conflict: each
                    # batch measured as if it were the first
                    t = time.perf_counter()
                    async with conn.transaction():
                        await writer.upsert(conn, SNAPSHOTS, rows)
                    results[method][kind].append((time.perf_counter() - t) * 1000)
    finally:
        await conn.close()
        await drop_database(settings, name)
    return results


def run() -> str:
    settings = stack_up()
    results = asyncio.run(_measure(settings))
    lines = [
        "## Sink write path",
        "",
        f"{BATCH:,}-row batches of 5 s rows (15 columns, JSONB processes) into the partitioned "
        f"`{SNAPSHOTS.name}` on the local PostgreSQL 15 over TLS, {SERVERS} servers; one "
        f"transaction per batch; {ROUNDS} rounds, methods interleaved. `insert`: new keys; "
        "`rewrite`: the same batch again (every row conflicts and is updated).",
        "",
        "| Method, batch kind | ms per batch (median) | range | rows/s (median) |",
        "| --- | ---: | ---: | ---: |",
    ]
    medians = {}
    for method, kinds in results.items():
        for kind, values in kinds.items():
            med = sorted(values)[len(values) // 2]
            medians[(method, kind)] = med
            lines.append(row(f"{method}, {kind}", values, "{:.1f}", f"{BATCH / med * 1000:,.0f}"))
    ratio = medians[("copy", "insert")] / medians[("unnest", "insert")]
    staged = medians[("copy", "insert")] / medians[("copy, staging only", "insert")]
    faster = "unnest" if ratio > 1 else "copy"
    lines += [
        "",
        f"COPY / unnest time ratio on new rows: {ratio:.2f}; the faster here is `{faster}`, "
        "which `write_method=auto` uses (`sinks/writer.py: FASTEST`). Straight COPY / staging "
        f"upsert on new rows: {staged:.2f}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
