"""From window aggregates to table rows: which table, which columns, which key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec
import orjson

from schemas import RESOLUTIONS, ResolutionSpec, WindowAggregate
from schemas.messages import ProcessInfo
from schemas.resolutions import BASE
from schemas.sketch import QUANTILES


@dataclass(frozen=True)
class TableSpec:
    """A table the sink writes: its columns (key first) and their SQL types. A row whose key
    is there already replaces it if it has at least its samples (the metric tables), or is
    left out (`keep_first`: rows that are facts, written once)."""

    name: str
    time_column: str
    columns: tuple[tuple[str, str], ...]
    key_columns: tuple[str, ...] | None = None
    keep_first: bool = False

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]

    @property
    def key(self) -> tuple[str, ...]:
        return self.key_columns or ("server_id", self.time_column)


_STATS = ("cpu_usage", "memory_usage", "disk_usage")

#: Columns after the key of the 5 s table: averages under the seed's names, min and max
#: beside, and the window's last process snapshot.
_SNAPSHOT_COLUMNS: tuple[tuple[str, str], ...] = (
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
)
#: Columns after the key of every rollup table (hourly, daily): then, per metric, its
#: percentiles and its quantile sketch as two arrays (keys, counts; `schemas/sketch.py`).
_ROLLUP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("sample_count", "int4"),
    *((f"{m}_{s}", "float8") for m in _STATS for s in ("avg", "min", "max")),
    ("network_rx", "int8"),
    ("network_tx", "int8"),
    *((f"{m}_{q}", "float8") for m in _STATS for q in QUANTILES),
    *((f"{m}_sketch_{part}", "int4[]") for m in _STATS for part in ("keys", "counts")),
)


def table_of(resolution: ResolutionSpec) -> TableSpec:
    """The table a resolution's windows are written to: the 5 s layout for the resolution
    windowed from the samples, the rollup layout for the others."""
    rest = _SNAPSHOT_COLUMNS if resolution is BASE else _ROLLUP_COLUMNS
    return TableSpec(
        name=resolution.table,
        time_column=resolution.time_column,
        columns=(("server_id", "varchar"), (resolution.time_column, "timestamptz"), *rest),
    )


#: The table of each resolution, by resolution name.
TABLES: Final = {r.name: table_of(r) for r in RESOLUTIONS}

#: Raw samples the stream worker refused as late and dead-lettered, one row per dead letter
#: (keyed by the raw record it was: a letter read twice is counted once).
LATE_SAMPLES: Final = TableSpec(
    name="late_samples",
    time_column="timestamp",
    columns=(
        ("source_partition", "int4"),
        ("source_offset", "int8"),
        ("server_id", "varchar"),
        ("timestamp", "timestamptz"),
    ),
    key_columns=("source_partition", "source_offset"),
    keep_first=True,
)


_PROCESS_FIELDS: Final = tuple(ProcessInfo.model_fields)


_encode_structs = msgspec.json.Encoder().encode


def processes_json(processes: list[ProcessInfo] | None) -> str:
    """The `processes` column: the list as JSON (from the model or its msgspec struct, which
    msgspec writes directly, its fields in the model's order)."""
    if not processes:
        return "[]"
    if isinstance(processes[0], msgspec.Struct):
        return _encode_structs(processes).decode()
    return orjson.dumps([{k: getattr(p, k) for k in _PROCESS_FIELDS} for p in processes]).decode()


def to_row(agg: WindowAggregate) -> tuple[Any, ...]:
    """The row of `agg` in its resolution's table, in `TableSpec.columns` order."""
    if agg.resolution == BASE.name:
        processes = processes_json(agg.processes)
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
    sketches = [s.sketch for s in stats]
    return (
        agg.server_id,
        agg.window_start,
        agg.count,
        *(v for s in stats for v in (s.avg, s.min, s.max)),
        agg.network_rx,
        agg.network_tx,
        *(getattr(s, q) for s in stats for q in QUANTILES),
        *(v for sk in sketches for v in ((None, None) if sk is None else (sk.keys, sk.counts))),
    )
