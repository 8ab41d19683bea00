"""The read path: a server's series over a time range, one row per bucket, gaps visible.

What the seed's per-minute query means: every bucket of the range is present (an empty one
has NULL values and 0 samples), each bucket appears once, and averages are weighted by the
number of samples behind each stored row. Each step is served by the table the resolutions
table names for it (`schemas/resolutions.py`): 5 s rows for 1-minute and 5-minute steps, hourly
rows for 1 h, daily rows for 1 d. The SQL is plain PostgreSQL (`generate_series` + `date_bin`),
the same on TimescaleDB.

Each bucket also says how complete it is: `samples` received, `expected` (the step's seconds,
one sample a second), `late` (samples refused as late and dead-lettered, counted by the sink
from `metrics.dlq.v1` into `late_samples`), and for a bucket with nothing, its `gap`: `offline`
when the server's latest status change by the bucket's end (`server_status_history`, kept by
the registry from `metrics.status.v1`) was to offline, else `no_data`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg

from schemas import RESOLUTIONS
from schemas.resolutions import BASE, read_steps
from schemas.sketch import QUANTILES

#: Steps the read path serves, in seconds.
STEPS: Final = read_steps()
#: The resolution whose table serves each step.
_SOURCE: Final = {step: r for r in RESOLUTIONS for step in r.steps}
#: The steps with percentiles: those served by the rollups, each the size of its resolution.
QUANTILE_STEPS: Final = tuple(step for r in RESOLUTIONS[1:] for step in r.steps)
if any(STEPS[step] != _SOURCE[step].seconds for step in QUANTILE_STEPS):
    raise ValueError("a rollup serves only the step of its own size (its rows' percentiles)")
METRICS: Final = ("cpu_usage", "memory_usage", "disk_usage")


class ReadError(ValueError):
    """A request the read path refuses; the message says why."""


@dataclass(frozen=True)
class SeriesPoint:
    bucket: datetime
    samples: int
    cpu_usage_avg: float | None
    cpu_usage_min: float | None
    cpu_usage_max: float | None
    memory_usage_avg: float | None
    memory_usage_min: float | None
    memory_usage_max: float | None
    disk_usage_avg: float | None
    disk_usage_min: float | None
    disk_usage_max: float | None
    network_rx: int | None
    network_tx: int | None
    #: Samples a server at 1 Hz sends in the bucket (the step, in seconds).
    expected: int
    #: Samples of the bucket that arrived after the lateness horizon and were dead-lettered
    #: (not in `samples`).
    late: int
    #: Why a bucket holds nothing: `offline` (the server was offline as the bucket ended, per
    #: `metrics.status.v1`) or `no_data`; None for a bucket with samples.
    gap: str | None
    #: Percentiles, from the hourly and daily rollups (steps 1h and 1d); None for the steps
    #: served by 5 s rows, for an empty bucket, and for a row written without a sketch.
    cpu_usage_p50: float | None = None
    cpu_usage_p90: float | None = None
    cpu_usage_p95: float | None = None
    cpu_usage_p99: float | None = None
    memory_usage_p50: float | None = None
    memory_usage_p90: float | None = None
    memory_usage_p95: float | None = None
    memory_usage_p99: float | None = None
    disk_usage_p50: float | None = None
    disk_usage_p90: float | None = None
    disk_usage_p95: float | None = None
    disk_usage_p99: float | None = None


def source(step: str) -> tuple[str, str, dict[str, tuple[str, str, str]]]:
    """(table, time column, metric → (avg, min, max) column) serving `step`."""
    r = _SOURCE[step]
    if r is BASE:  # the 5 s table keeps its averages under the seed's names
        cols = {m: (m, f"{m}_min", f"{m}_max") for m in METRICS}
    else:
        cols = {m: (f"{m}_avg", f"{m}_min", f"{m}_max") for m in METRICS}
    return r.table, f'"{r.time_column}"', cols


def _query(step: str) -> str:
    table, time_col, cols = source(step)
    metric_sql = ",\n".join(
        f"sum({avg} * sample_count) / sum(sample_count) AS {m}_avg, "
        f"min({lo}) AS {m}_min, max({hi}) AS {m}_max"
        for m, (avg, lo, hi) in cols.items()
    )
    # A rollup step is its resolution's size: one row per bucket, whose percentiles are the
    # bucket's (a larger step would merge the rows' sketches, as the fleet query does).
    if step in QUANTILE_STEPS:
        metric_sql += "".join(f", max({m}_{q}) AS {m}_{q}" for m in METRICS for q in QUANTILES)
    else:
        metric_sql += "".join(f", NULL::float8 AS {m}_{q}" for m in METRICS for q in QUANTILES)
    names = ", ".join(f"a.{m}_{s}" for m in METRICS for s in ("avg", "min", "max", *QUANTILES))
    return f"""
        WITH a AS (
            SELECT date_bin($4::interval, {time_col}, $2::timestamptz) AS bucket,
                   sum(sample_count)::bigint AS samples,
                   {metric_sql},
                   sum(network_rx)::bigint AS network_rx,
                   sum(network_tx)::bigint AS network_tx
            FROM {table}
            WHERE server_id = $1 AND {time_col} >= $2::timestamptz AND {time_col} < $3::timestamptz
            GROUP BY 1
        )
        , late AS (
            SELECT date_bin($4::interval, "timestamp", $2::timestamptz) AS bucket,
                   count(*)::bigint AS late
            FROM late_samples
            WHERE server_id = $1 AND "timestamp" >= $2::timestamptz
              AND "timestamp" < $3::timestamptz
            GROUP BY 1
        )
        SELECT g.bucket, coalesce(a.samples, 0) AS samples, {names},
               a.network_rx, a.network_tx, coalesce(late.late, 0) AS late,
               CASE WHEN a.samples IS NOT NULL THEN NULL
                    WHEN st.online IS FALSE THEN 'offline' ELSE 'no_data' END AS gap
        FROM generate_series($2::timestamptz, $3::timestamptz - $4::interval, $4::interval)
             AS g(bucket)
        LEFT JOIN a ON a.bucket = g.bucket
        LEFT JOIN late ON late.bucket = g.bucket
        -- The server's state as the bucket ends: its latest status change by then.
        LEFT JOIN LATERAL (
            SELECT h.online FROM server_status_history h
            WHERE h.server_id = $1 AND h.event_at < g.bucket + $4::interval
            ORDER BY h.event_at DESC, h.changed_at DESC LIMIT 1
        ) st ON a.samples IS NULL
        ORDER BY g.bucket
    """


def align(start: datetime, end: datetime, step: str) -> tuple[datetime, datetime]:
    """The range widened to whole steps (UTC, counted from the Unix epoch)."""
    seconds = STEPS[step]
    lo = math.floor(start.timestamp() / seconds) * seconds
    hi = math.ceil(end.timestamp() / seconds) * seconds
    return datetime.fromtimestamp(lo, UTC), datetime.fromtimestamp(hi, UTC)


def count_points(start: datetime, end: datetime, step: str) -> int:
    lo, hi = align(start, end, step)
    return int((hi - lo).total_seconds()) // STEPS[step]


def check_range(start: datetime, end: datetime, step: str, max_points: int) -> None:
    """Refuse a range or step the read path does not serve (a `ReadError` that says why)."""
    if step not in STEPS:
        raise ReadError(f"step must be one of {', '.join(STEPS)}, not {step!r}")
    if start.tzinfo is None or end.tzinfo is None:
        raise ReadError("from and to need a time zone (e.g. 2026-11-25T10:00:00Z)")
    if end <= start:
        raise ReadError("to must be after from")
    n = count_points(start, end, step)
    if n > max_points:
        raise ReadError(
            f"{n} points requested; at most {max_points} per request (use a larger step)"
        )


async def read_series(
    conn: asyncpg.Connection,
    server_id: str,
    start: datetime,
    end: datetime,
    step: str,
    *,
    max_points: int = 10_000,
) -> list[SeriesPoint]:
    """One point per step in [start, end), oldest first; empty buckets have NULL values."""
    check_range(start, end, step, max_points)
    lo, hi = align(start, end, step)
    rows = await conn.fetch(_query(step), server_id, lo, hi, timedelta(seconds=STEPS[step]))
    return [SeriesPoint(**dict(r), expected=STEPS[step]) for r in rows]
