"""Settings of the sink (`fleetpulse sink`, `fleetpulse db maintain`)."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from runtime.settings import SINK_ROLE, KafkaSettings, PostgresSettings, ServiceSettings
from schemas.resolutions import Resolution, per_resolution
from schemas.topics import DLQ

#: The variables of earlier releases, one per resolution, and the resolution each sets.
_TOPIC_VARIABLES: dict[str, str] = {
    Resolution.FIVE_SECONDS: "agg_5s_topic",
    Resolution.ONE_HOUR: "agg_1h_topic",
    Resolution.ONE_DAY: "agg_1d_topic",
}
_RETENTION_VARIABLES: dict[str, str] = {
    Resolution.FIVE_SECONDS: "retention_5s_days",
    Resolution.ONE_HOUR: "retention_hourly_days",
    Resolution.ONE_DAY: "retention_daily_days",
}


class SinkSettings(KafkaSettings, PostgresSettings, ServiceSettings):
    """The database writer for the aggregate topics."""

    # FLEETPULSE_RETENTION_DAYS__1H=60 sets one entry of a per-resolution mapping.
    model_config = SettingsConfigDict(env_nested_delimiter="__")

    kafka_sasl_username: str = Field(
        default="sink", description="Kafka user (principal) of this service."
    )
    pg_user: str = Field(
        default=SINK_ROLE,
        description="Database role of the sink: writes the metric tables, maintains their "
        "partitions through the owner's functions, reads nothing else.",
    )
    sink_group: str = Field(
        default="fleetpulse-sink", description="Kafka consumer group of the sink workers."
    )
    batch_rows: int = Field(
        default=50_000,
        ge=1,
        le=100_000,
        description="Rows per database transaction, at most (a catching-up sink writes "
        "50,000 at a time: per-batch costs, the commits and the offset commits, weigh on "
        "smaller ones; a live sink writes what its batch age brings).",
    )
    batch_age_ms: int = Field(
        default=500,
        ge=1,
        description="Longest a row waits before its batch is written while more keep coming "
        "(a sink that has read all there is writes at once).",
    )
    write_connections: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Database connections a batch is written over, its partitions split "
        "between them (a partition always on the same one, so a key's rows stay in order). "
        "With two, the database works on one part while the other's rows are sent.",
    )
    write_method: Literal["auto", "copy", "unnest"] = Field(
        default="auto",
        description=(
            "How batches reach the table: `copy` (COPY into a staging table, then upsert), "
            "`unnest` (one INSERT … SELECT FROM unnest(…) upsert), or `auto` (the faster one "
            "measured in BENCHMARKS.md, falling back when COPY is not available)."
        ),
    )
    maintain_every: float = Field(
        default=3600.0, gt=0, description="Seconds between partition maintenance runs in the sink."
    )
    retention_days: dict[str, Annotated[int, Field(ge=1)] | None] = Field(
        default_factory=dict,
        description="Days each resolution's rows are kept, by resolution: "
        "`FLEETPULSE_RETENTION_DAYS__1H=60`, or a JSON object where null is forever. A "
        "resolution not named keeps the resolutions table's default (5 s 30 days, hourly "
        "400, daily forever). Plain PostgreSQL: maintenance drops partitions past it; "
        "TimescaleDB: the migrations' policies do.",
    )
    partitions_ahead_days: int = Field(
        default=7, ge=1, description="Days of partitions created ahead of today (plain PostgreSQL)."
    )
    agg_topics: dict[str, str] = Field(
        default_factory=dict,
        description="Topic the sink reads each resolution's windows from, by resolution: "
        "`FLEETPULSE_AGG_TOPICS__1H=…`, or a JSON object. A resolution not named reads its "
        "topic in the resolutions table.",
    )
    dlq_topic: str = Field(default=DLQ.name, description="Dead-letter topic.")
    metrics_port: int = Field(
        default=9474, ge=0, le=65535, description="Port of /metrics and /health; 0 = off."
    )

    # Per-resolution variables of earlier releases, still read; the mappings above win.
    agg_5s_topic: str | None = Field(default=None, description="agg_topics 5s (older name).")
    agg_1h_topic: str | None = Field(default=None, description="agg_topics 1h (older name).")
    agg_1d_topic: str | None = Field(default=None, description="agg_topics 1d (older name).")
    retention_5s_days: int | None = Field(
        default=None, ge=1, description="retention_days 5s (older name)."
    )
    retention_hourly_days: int | None = Field(
        default=None, ge=1, description="retention_days 1h (older name)."
    )
    retention_daily_days: int | None = Field(
        default=None, ge=1, description="retention_days 1d (older name)."
    )

    @model_validator(mode="after")
    def _every_resolution(self) -> Self:
        """Complete the mappings: the table's defaults, the older variables, the mappings."""
        given = self.model_fields_set
        older_topics = {
            r: getattr(self, v) for r, v in _TOPIC_VARIABLES.items() if getattr(self, v)
        }
        self.agg_topics = per_resolution(lambda r: r.topic, older_topics, self.agg_topics)
        older_days = {r: getattr(self, v) for r, v in _RETENTION_VARIABLES.items() if v in given}
        self.retention_days = per_resolution(
            lambda r: r.retention_days, older_days, self.retention_days
        )
        return self
