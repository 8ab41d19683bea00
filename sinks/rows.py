"""From window aggregates to table rows: which table, which columns, which key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from schemas import AGG_1D, AGG_1H, AGG_5S, Resolution, WindowAggregate
from schemas.messages import ProcessInfo


@dataclass(frozen=True)
class TableSpec:
    """A metric table the sink writes: its columns (key first) and their SQL types."""

    name: str
    time_column: str
    columns: tuple[tuple[str, str], ...]

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]

    @property
    def key(self) -> tuple[str, str]:
        return ("server_id", self.time_column)


_STATS = ("cpu_usage", "memory_usage", "disk_usage")

SNAPSHOTS = TableSpec(
    name="metrics_snapshots",
    time_column="timestamp",
    columns=(
        ("server_id", "varchar"),
        ("timestamp", "timestamptz"),
        ("cpu_usage", "float8"),
        ("memory_usage", "float8"),
        ("disk_usage", "float8"),
        ("cpu_usage_min", "float8"),
        ("cpu_usage_max", "float8"),
        ("memory_usage_min", "float8"),
        ("memory_usage_max", "float8"),
        ("disk_usage_min", "float8"),
        ("disk_usage_max", "float8"),
        ("sample_count", "int2"),
        ("network_rx", "int8"),
        ("network_tx", "int8"),
        ("processes", "jsonb"),
    ),
)

_ROLLUP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("server_id", "varchar"),
    ("bucket", "timestamptz"),
    ("sample_count", "int4"),
    *((f"{m}_{s}", "float8") for m in _STATS for s in ("avg", "min", "max")),
    ("network_rx", "int8"),
    ("network_tx", "int8"),
)
HOURLY = TableSpec(name="metrics_hourly", time_column="bucket", columns=_ROLLUP_COLUMNS)
DAILY = TableSpec(name="metrics_daily", time_column="bucket", columns=_ROLLUP_COLUMNS)

#: Which table each aggregate topic goes to.
TABLE_OF_TOPIC: dict[str, TableSpec] = {
    AGG_5S.name: SNAPSHOTS,
    AGG_1H.name: HOURLY,
    AGG_1D.name: DAILY,
}
TABLE_OF_RESOLUTION: dict[Resolution, TableSpec] = {
    Resolution.FIVE_SECONDS: SNAPSHOTS,
    Resolution.ONE_HOUR: HOURLY,
    Resolution.ONE_DAY: DAILY,
}


#: Serialises the `processes` list in pydantic-core (a fifth of `json.dumps` of `model_dump`s).
_PROCESSES: TypeAdapter[list[ProcessInfo]] = TypeAdapter(list[ProcessInfo])


def to_row(agg: WindowAggregate) -> tuple[Any, ...]:
    """The row of `agg` in its resolution's table, in `TableSpec.columns` order."""
    if agg.resolution is Resolution.FIVE_SECONDS:
        processes = _PROCESSES.dump_json(agg.processes or []).decode()
        return (
            agg.server_id,
            agg.window_start,
            agg.cpu_usage.avg,
            agg.memory_usage.avg,
            agg.disk_usage.avg,
            agg.cpu_usage.min,
            agg.cpu_usage.max,
            agg.memory_usage.min,
            agg.memory_usage.max,
            agg.disk_usage.min,
            agg.disk_usage.max,
            agg.count,
            agg.network_rx,
            agg.network_tx,
            processes,
        )
    stats = [getattr(agg, m) for m in _STATS]
    return (
        agg.server_id,
        agg.window_start,
        agg.count,
        *(v for s in stats for v in (s.avg, s.min, s.max)),
        agg.network_rx,
        agg.network_tx,
    )
