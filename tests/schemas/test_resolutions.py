"""The resolutions table is the one source: what each component derives from it, a table with
one more row derives it too, and a table the pipeline cannot run is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest

from infra.db import load_migrations, missing_tables
from schemas import ALL_TOPICS, RESOLUTIONS, Resolution, ResolutionSpec
from schemas.resolutions import BASE, check, per_resolution, read_steps
from schemas.topics import AGGREGATE_TOPICS, aggregate_topics, all_topics
from sinks.read import STEPS
from sinks.rows import TABLES

#: One more row: a week, cascaded like the day (the row of the day, with its own names).
WEEKLY = replace(
    RESOLUTIONS[-1],
    name="1w",
    seconds=7 * 86400,
    label="weekly",
    topic="metrics.agg.1w.v1",
    topic_retention_days=365,
    table="metrics_weekly",
    steps={"1w": 7 * 86400},
)
WITH_WEEKLY = (*RESOLUTIONS, WEEKLY)


def test_the_table_is_the_one_the_wire_and_the_components_use() -> None:
    assert [r.name for r in RESOLUTIONS] == [r.value for r in Resolution] == ["5s", "1h", "1d"]
    assert [Resolution(r.name).seconds for r in RESOLUTIONS] == [5, 3600, 86400]
    assert (
        BASE.name == Resolution.FIVE_SECONDS and Resolution.ONE_HOUR.spec.table == "metrics_hourly"
    )
    # What is derived at import is the derivation of the table itself.
    assert all_topics(RESOLUTIONS) == ALL_TOPICS
    assert STEPS == read_steps(RESOLUTIONS) == {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}
    assert {r: t.name for r, t in TABLES.items()} == {r.name: r.table for r in RESOLUTIONS}
    for mode in ("postgres", "timescaledb"):
        assert missing_tables(load_migrations(mode), RESOLUTIONS) == []


def test_a_resolution_added_to_the_table_alone_appears_everywhere_it_is_derived() -> None:
    """One more row and nothing else: a topic to create, a table the migrations check says is
    missing (until a migration creates it), a step the read path serves."""
    assert check(WITH_WEEKLY) == WITH_WEEKLY
    [weekly] = [t for t in all_topics(WITH_WEEKLY) if t not in ALL_TOPICS]
    assert (weekly.name, weekly.partitions) == ("metrics.agg.1w.v1", 3)
    assert weekly.retention_ms == 365 * 86400 * 1000
    assert weekly.description.startswith("closed weekly windows")
    assert list(aggregate_topics(WITH_WEEKLY)) == ["5s", "1h", "1d", "1w"]
    for mode in ("postgres", "timescaledb"):
        assert missing_tables(load_migrations(mode), WITH_WEEKLY) == ["metrics_weekly"]
    assert read_steps(WITH_WEEKLY) == {**STEPS, "1w": 7 * 86400}


def test_the_aggregate_topics_are_the_tables_rows() -> None:
    assert [t.name for t in AGGREGATE_TOPICS.values()] == [r.topic for r in RESOLUTIONS]
    assert AGGREGATE_TOPICS[Resolution.FIVE_SECONDS].partitions == BASE.topic_partitions


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ((), "empty"),
        ((*RESOLUTIONS, replace(WEEKLY, name="1d")), "same name"),
        ((*RESOLUTIONS, replace(WEEKLY, table="metrics_daily")), "same table"),
        ((*RESOLUTIONS, replace(WEEKLY, topic=BASE.topic)), "same topic"),
        ((*RESOLUTIONS, replace(WEEKLY, steps={"1d": 86400})), "same read step"),
        ((*RESOLUTIONS, replace(WEEKLY, seconds=3600)), "longer than 1d"),
        ((*RESOLUTIONS, replace(WEEKLY, seconds=7 * 86400 + 3)), "multiple of 5s"),
        ((*RESOLUTIONS, replace(WEEKLY, steps={"10d": 10 * 86400})), "not whole 1w windows"),
    ],
)
def test_a_table_the_pipeline_cannot_run_is_refused(
    table: tuple[ResolutionSpec, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check(table)


def test_per_resolution_values_default_to_the_table_and_refuse_unknown_names() -> None:
    assert per_resolution(lambda r: r.retention_days) == {"5s": 30, "1h": 400, "1d": None}
    older: dict[str, int | None] = {"5s": 10, "1h": 20}
    newer: dict[str, int | None] = {"1h": 21, "1d": 5}
    assert per_resolution(lambda r: r.retention_days, older, newer) == {
        "5s": 10,
        "1h": 21,
        "1d": 5,
    }
    with pytest.raises(ValueError, match="no resolution 1w; the resolutions are 5s, 1h, 1d"):
        per_resolution(lambda r: r.topic, {"1w": "x"})
    assert per_resolution(lambda r: r.topic, {"1w": "x"}, table=WITH_WEEKLY)["1w"] == "x"
