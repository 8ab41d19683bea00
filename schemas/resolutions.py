"""The resolutions FleetPulse aggregates to, as one table: what each one is, from the window
the stream closes to the rows the registry reads.

Every component reads its part from here: the window engine its sizes, the stream worker and
the sink the aggregate topics, the sink its tables, partition units and retention defaults, the
read path and the metrics route the steps, the demo and `fleetpulse lag` what to show. The first
row is windowed from the raw samples themselves; every later one is cascaded from the first
one's closed windows, so its size is a multiple of the first's.

A new resolution is a row here and its member in `Resolution` (the value on the wire, checked
against the table on import), and a migration that creates its table: `fleetpulse db migrate`
refuses to run while a resolution's table is created by no migration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Final, Literal, TypeVar

T = TypeVar("T")

#: Units `fleetpulse_ensure_partitions()` cuts a table's range partitions in (plain PostgreSQL).
PartitionUnit = Literal["day", "month", "year"]


class Resolution(StrEnum):
    """Window sizes the stream emits."""

    FIVE_SECONDS = "5s"
    ONE_HOUR = "1h"
    ONE_DAY = "1d"

    @property
    def spec(self) -> ResolutionSpec:
        """This resolution's row in the table."""
        return BY_NAME[self]

    @property
    def seconds(self) -> int:
        return BY_NAME[self].seconds


@dataclass(frozen=True, slots=True)
class ResolutionSpec:
    """One resolution: its windows, its topic, its table, how long its rows are kept, and the
    steps the read path serves from them."""

    #: The `resolution` of its `WindowAggregate` messages, and its key in per-resolution
    #: settings (`FLEETPULSE_AGG_TOPICS__1H`, `FLEETPULSE_RETENTION_DAYS__1H`,
    #: `FLEETPULSE_GRACE__1H`).
    name: str
    #: Window size, s.
    seconds: int
    #: What people call its windows ("hourly"), for descriptions and screens.
    label: str
    #: Its aggregate topic (key = server_id), with the topic's partitions and retention.
    topic: str
    topic_partitions: int
    topic_retention_days: int
    #: Its table, and the table's time column (the key is `server_id` and that column).
    table: str
    time_column: str
    #: Default of the sink's retention for the table, days (None: kept forever). On plain
    #: PostgreSQL the sink drops partitions past it; on TimescaleDB a migration's policy does.
    retention_days: int | None
    #: How the table is range-partitioned on plain PostgreSQL.
    partition_unit: PartitionUnit
    #: Steps of the read path served from this table: name → seconds.
    steps: Mapping[str, int] = field(default_factory=dict)
    #: Default of the seconds its windows wait past their end, in their server's event time,
    #: for out-of-order samples (`FLEETPULSE_GRACE__1H`); never below the first row's.
    grace: float = 5.0


# Partition counts bound how far each stage scales out (one consumer per partition). The first
# resolution's topic has the raw topic's count, so a server keeps its partition number from the
# raw topic to its 5 s windows.
RESOLUTIONS: Final[tuple[ResolutionSpec, ...]] = (
    ResolutionSpec(
        name=Resolution.FIVE_SECONDS,
        seconds=5,
        label="5 s",
        topic="metrics.agg.5s.v1",
        topic_partitions=6,
        topic_retention_days=7,
        table="metrics_snapshots",
        time_column="timestamp",
        retention_days=30,
        partition_unit="day",
        steps={"1m": 60, "5m": 300},
    ),
    ResolutionSpec(
        name=Resolution.ONE_HOUR,
        seconds=3600,
        label="hourly",
        topic="metrics.agg.1h.v1",
        topic_partitions=3,
        topic_retention_days=30,
        table="metrics_hourly",
        time_column="bucket",
        # About 13 months: a year back compared with the same month.
        retention_days=400,
        partition_unit="month",
        steps={"1h": 3600},
    ),
    ResolutionSpec(
        name=Resolution.ONE_DAY,
        seconds=86400,
        label="daily",
        topic="metrics.agg.1d.v1",
        topic_partitions=3,
        topic_retention_days=90,
        table="metrics_daily",
        time_column="bucket",
        retention_days=None,  # one row per server and day: small enough to keep
        partition_unit="year",
        steps={"1d": 86400},
    ),
)


def check(table: Iterable[ResolutionSpec]) -> tuple[ResolutionSpec, ...]:
    """`table` if it is one the pipeline can run: unique names, topics, tables and steps;
    sizes growing, each a multiple of the first (the cascade); each step a whole number of
    its table's windows. Raises `ValueError` naming what is wrong."""
    rows = tuple(table)
    if not rows:
        raise ValueError("the resolutions table is empty")
    for what in ("name", "topic", "table"):
        values = [getattr(r, what) for r in rows]
        if len(set(values)) < len(values):
            raise ValueError(f"two resolutions have the same {what}: {values}")
    steps = [s for r in rows for s in r.steps]
    if len(set(steps)) < len(steps):
        raise ValueError(f"two resolutions serve the same read step: {steps}")
    base = rows[0]
    for before, r in pairwise(rows):
        if r.seconds <= before.seconds or r.seconds % base.seconds:
            raise ValueError(
                f"resolution {r.name} ({r.seconds} s) must be longer than {before.name} and a "
                f"multiple of {base.name} ({base.seconds} s), whose closed windows feed it"
            )
    for r in rows:
        bad = [s for s, seconds in r.steps.items() if seconds <= 0 or seconds % r.seconds]
        if bad:
            raise ValueError(f"steps {bad} are not whole {r.name} windows")
    return rows


def read_steps(table: Iterable[ResolutionSpec] = RESOLUTIONS) -> dict[str, int]:
    """Every step the read path serves (name → seconds), shortest first."""
    steps = {s: seconds for r in table for s, seconds in r.steps.items()}
    return dict(sorted(steps.items(), key=lambda item: item[1]))


def per_resolution(
    default: Callable[[ResolutionSpec], T],
    *overrides: Mapping[str, T],
    table: Iterable[ResolutionSpec] = RESOLUTIONS,
) -> dict[str, T]:
    """A value for every resolution (by name, in table order): `default` of its row, replaced
    by the overrides that name it (a later one wins). A name that is not in the table is an
    error: a setting for a resolution that does not exist is a mistake, not a no-op."""
    rows = tuple(table)
    values = {r.name: default(r) for r in rows}
    for given in overrides:
        unknown = sorted(set(given) - set(values))
        if unknown:
            raise ValueError(
                f"no resolution {', '.join(unknown)}; the resolutions are "
                f"{', '.join(r.name for r in rows)}"
            )
        values.update(given)
    return values


check(RESOLUTIONS)
#: Each row by its name.
BY_NAME: Final[dict[str, ResolutionSpec]] = {r.name: r for r in RESOLUTIONS}
#: The resolution windowed from the raw samples; the others are cascaded from its windows.
BASE: Final = RESOLUTIONS[0]

if [r.value for r in Resolution] != [r.name for r in RESOLUTIONS]:
    raise ValueError(
        "the Resolution enum and the resolutions table list different resolutions: "
        f"{[r.value for r in Resolution]} against {[r.name for r in RESOLUTIONS]}"
    )
