"""Fleet-wide series: one statistic of every metric over many servers, per bucket, in one query.

`avg` is weighted by the samples behind each row, `min` and `max` are the extremes of the rows'.
A percentile (`p50` … `p99`) merges the quantile sketches of every row of the bucket in SQL,
plain PostgreSQL with no extension (the same on TimescaleDB): the rows' key and count arrays
are unnested together, counts summed per key, a running sum over the keys in order finds the
bucket of rank floor(q (n - 1)), and that bucket's value (`schemas/sketch.py`), clamped to the
bucket's exact extremes, is within 1 % of the exact percentile of all those servers' samples.
A bucket holding a row without a sketch (written before sketches, or from a worker restored
from older state) has no percentile: it is not guessed from part of its samples.

Percentiles come from the hourly and daily rollups, so from steps `1h` and `1d`; `avg`, `min`
and `max` from every step of the read path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import asyncpg

from schemas import sketch
from sinks.read import METRICS, QUANTILE_STEPS, STEPS, ReadError, align, check_range, source

#: The statistics a fleet series (and a server's, `stat=`) can be asked for.
STATS: Final = ("avg", "min", "max", *sketch.QUANTILES)


@dataclass(frozen=True)
class StatPoint:
    """One bucket: the samples and servers behind it, and the statistic of each metric (None
    for an empty bucket, or a percentile the bucket's rows cannot give)."""

    bucket: datetime
    samples: int
    servers: int
    cpu_usage: float | None
    memory_usage: float | None
    disk_usage: float | None


def _rows_cte(table: str, time_col: str) -> str:
    return f"""
        r AS (
            SELECT date_bin($3::interval, {time_col}, $1::timestamptz) AS b, *
            FROM {table}
            WHERE {time_col} >= $1::timestamptz AND {time_col} < $2::timestamptz
              AND ($4::varchar[] IS NULL OR server_id = ANY($4::varchar[]))
        )"""


def _simple_query(step: str, stat: str) -> str:
    table, time_col, cols = source(step)
    exprs = []
    for m, (avg, lo, hi) in cols.items():
        if stat == "avg":
            exprs.append(f"sum({avg} * sample_count) / sum(sample_count) AS {m}")
        else:
            exprs.append(f"{stat}({lo if stat == 'min' else hi}) AS {m}")
    return f"""
        WITH {_rows_cte(table, time_col)},
        a AS (
            SELECT b, sum(sample_count)::bigint AS samples,
                   count(DISTINCT server_id)::int AS servers, {", ".join(exprs)}
            FROM r GROUP BY b
        )
        SELECT g.b AS bucket, coalesce(a.samples, 0) AS samples,
               coalesce(a.servers, 0) AS servers, {", ".join(f"a.{m}" for m in METRICS)}
        FROM generate_series($1::timestamptz, $2::timestamptz - $3::interval, $3::interval)
             AS g(b)
        LEFT JOIN a ON a.b = g.b
        ORDER BY g.b
    """


def _quantile_query(step: str) -> str:
    """Per bucket: samples, servers, each metric's exact extremes, and the key of the bucket
    of rank floor($5 (n - 1)) in the merged sketch of its n sketched samples."""
    table, time_col, _ = source(step)
    ctes = [_rows_cte(table, time_col)]
    ctes.append(
        f"""
        a AS (
            SELECT b, sum(sample_count)::bigint AS samples,
                   count(DISTINCT server_id)::int AS servers,
                   {", ".join(f"min({m}_min) AS {m}_lo, max({m}_max) AS {m}_hi" for m in METRICS)}
            FROM r GROUP BY b
        )"""
    )
    for m in METRICS:
        ctes.append(
            f"""
        q_{m} AS (
            SELECT b, min(k) FILTER (WHERE cum > floor($5::float8 * (n - 1))) AS k,
                   max(n)::bigint AS n
            FROM (
                SELECT b, k, sum(c) OVER (PARTITION BY b ORDER BY k) AS cum,
                       sum(c) OVER (PARTITION BY b) AS n
                FROM (
                    SELECT r.b, u.k, sum(u.c) AS c
                    FROM r, unnest(r.{m}_sketch_keys, r.{m}_sketch_counts) AS u(k, c)
                    GROUP BY r.b, u.k
                ) merged
            ) ranked
            GROUP BY b
        )"""
        )
    picks = ", ".join(f"a.{m}_lo, a.{m}_hi, q_{m}.k AS {m}_key, q_{m}.n AS {m}_n" for m in METRICS)
    joins = " ".join(f"LEFT JOIN q_{m} ON q_{m}.b = g.b" for m in METRICS)
    return f"""
        WITH {",".join(ctes)}
        SELECT g.b AS bucket, coalesce(a.samples, 0) AS samples,
               coalesce(a.servers, 0) AS servers, {picks}
        FROM generate_series($1::timestamptz, $2::timestamptz - $3::interval, $3::interval)
             AS g(b)
        LEFT JOIN a ON a.b = g.b {joins}
        ORDER BY g.b
    """


def _quantile(row: asyncpg.Record, metric: str) -> float | None:
    """The bucket's percentile of `metric`, or None if not every sample is in a sketch."""
    key, n, samples = row[f"{metric}_key"], row[f"{metric}_n"], row["samples"]
    if key is None or n != samples:
        return None
    value = sketch.representative(key)
    lo: float = row[f"{metric}_lo"]
    hi: float = row[f"{metric}_hi"]
    return min(max(value, lo), hi)


def check_stat(stat: str, step: str) -> None:
    """Refuse a statistic the step cannot give (a `ReadError` that says which steps can)."""
    if stat not in STATS:
        raise ReadError(f"stat must be one of {', '.join(STATS)}, not {stat!r}")
    if stat in sketch.QUANTILES and step not in QUANTILE_STEPS:
        raise ReadError(
            f"{stat} comes from the hourly and daily rollups: use step "
            f"{' or '.join(QUANTILE_STEPS)}, not {step}"
        )


async def read_fleet(
    conn: asyncpg.Connection,
    start: datetime,
    end: datetime,
    step: str,
    stat: str,
    servers: list[str] | None = None,
    *,
    max_points: int = 10_000,
) -> list[StatPoint]:
    """`stat` of every metric per step in [start, end) over `servers` (None: all), oldest
    first; empty buckets included."""
    check_range(start, end, step, max_points)
    check_stat(stat, step)
    lo, hi = align(start, end, step)
    interval = timedelta(seconds=STEPS[step])
    if stat in sketch.QUANTILES:
        rows = await conn.fetch(
            _quantile_query(step), lo, hi, interval, servers, sketch.QUANTILES[stat]
        )
        return [
            StatPoint(
                bucket=r["bucket"],
                samples=r["samples"],
                servers=r["servers"],
                cpu_usage=_quantile(r, "cpu_usage"),
                memory_usage=_quantile(r, "memory_usage"),
                disk_usage=_quantile(r, "disk_usage"),
            )
            for r in rows
        ]
    rows = await conn.fetch(_simple_query(step, stat), lo, hi, interval, servers)
    return [StatPoint(**dict(r)) for r in rows]
