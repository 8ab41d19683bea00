"""Settings of the sink (`fleetpulse sink`, `fleetpulse db maintain`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runtime.settings import KafkaSettings, PostgresSettings, ServiceSettings
from schemas.topics import AGG_1D, AGG_1H, AGG_5S, DLQ


class SinkSettings(KafkaSettings, PostgresSettings, ServiceSettings):
    """The database writer for the aggregate topics."""

    sink_group: str = Field(
        default="fleetpulse-sink", description="Kafka consumer group of the sink workers."
    )
    batch_rows: int = Field(
        default=5000, ge=1, le=100_000, description="Rows per database transaction (at most)."
    )
    batch_age_ms: int = Field(
        default=500,
        ge=1,
        description="Longest a row waits before its batch is written while more keep coming "
        "(a sink that has read all there is writes at once).",
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
    retention_5s_days: int = Field(default=30, ge=1, description="Days of 5 s rows kept.")
    retention_hourly_days: int | None = Field(
        default=400, ge=1, description="Days of hourly rows kept (unset: forever)."
    )
    retention_daily_days: int | None = Field(
        default=None, ge=1, description="Days of daily rows kept (unset: forever)."
    )
    partitions_ahead_days: int = Field(
        default=7, ge=1, description="Days of partitions created ahead of today (plain PostgreSQL)."
    )
    agg_5s_topic: str = Field(default=AGG_5S.name, description="Topic of 5 s windows.")
    agg_1h_topic: str = Field(default=AGG_1H.name, description="Topic of hourly windows.")
    agg_1d_topic: str = Field(default=AGG_1D.name, description="Topic of daily windows.")
    dlq_topic: str = Field(default=DLQ.name, description="Dead-letter topic.")
    metrics_port: int = Field(
        default=9474, ge=0, le=65535, description="Port of /metrics and /health; 0 = off."
    )
