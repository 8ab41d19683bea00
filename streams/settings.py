"""Settings of the stream worker (`fleetpulse stream`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from runtime.settings import KafkaSettings, RetrySettings, TelemetrySettings
from schemas.topics import AGG_1D, AGG_1H, AGG_5S, DLQ, RAW, STATUS


class StreamSettings(KafkaSettings, TelemetrySettings, RetrySettings):
    """The Faust worker that windows raw events."""

    compression: Literal["lz4", "gzip", "zstd", "snappy", "none"] = Field(
        default="zstd",
        # aiokafka's lz4 runs at level 9, six times slower than zstd's default level on the
        # worker's outputs, for a worse ratio.
        description="Compression of the batches the worker sends (outputs, changelog).",
    )

    stream_group: str = Field(
        default="fleetpulse-stream",
        description="Faust application id: the consumer group shared by all stream workers.",
    )
    grace_5s: float = Field(default=5.0, ge=0, description="Grace of 5 s windows, s.")
    grace_1h: float = Field(default=5.0, ge=0, description="Grace of hourly windows, s.")
    grace_1d: float = Field(default=5.0, ge=0, description="Grace of daily windows, s.")
    lateness_horizon: float = Field(
        default=3600.0,
        gt=0,
        description="How far behind its server's latest sample a late sample is still "
        "absorbed, s: its closed 5 s window (and hourly/daily ones) are emitted again, "
        "corrected. Older samples go to the DLQ as `late`. Each server's closed 5 s windows "
        "are kept this long, in memory and in the changelog.",
    )
    offline_after: float = Field(
        default=15.0, gt=0, description="Seconds without events before a server is offline."
    )
    stream_batch: int = Field(
        default=5000, ge=1, description="Most raw events the worker takes in one batch."
    )
    stream_batch_within: float = Field(
        default=0.2, gt=0, description="Longest wait to fill a batch, s."
    )
    stream_checkpoint_interval: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between checkpoints: outputs acknowledged, hourly/daily state "
        "saved to the changelog, offsets committed. Longer: less overhead, more replay after "
        "a crash.",
    )
    metrics_port: int = Field(
        default=9473,
        ge=0,
        le=65535,
        description="Port of Faust's web server, which serves /metrics and /health; 0 = off.",
    )

    raw_topic: str = Field(default=RAW.name, description="Input topic of raw events.")
    agg_5s_topic: str = Field(default=AGG_5S.name, description="Output topic of 5 s windows.")
    agg_1h_topic: str = Field(default=AGG_1H.name, description="Output topic of hourly windows.")
    agg_1d_topic: str = Field(default=AGG_1D.name, description="Output topic of daily windows.")
    status_topic: str = Field(default=STATUS.name, description="Output topic of status changes.")
    dlq_topic: str = Field(default=DLQ.name, description="Dead-letter topic.")

    @property
    def changelog_topic(self) -> str:
        """The group's compacted changelog (servers' clocks and hourly/daily windows, closed
        5 s windows kept for corrections), partitioned like the raw topic (created by the
        worker)."""
        return f"{self.stream_group}-rollups-changelog"

    @model_validator(mode="after")
    def _rollup_grace_covers_5s(self) -> StreamSettings:
        if self.grace_1h < self.grace_5s or self.grace_1d < self.grace_5s:
            raise ValueError("grace_1h and grace_1d must be at least grace_5s")
        return self
