"""Settings of the stream worker (`fleetpulse stream`)."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from runtime.settings import KafkaSettings, RetrySettings, TelemetrySettings
from schemas.resolutions import Resolution, per_resolution
from schemas.topics import DLQ, RAW, STATUS
from streams.windows import Grace

#: The variables of earlier releases, one per resolution, and the resolution each sets.
_TOPIC_VARIABLES: dict[str, str] = {
    Resolution.FIVE_SECONDS: "agg_5s_topic",
    Resolution.ONE_HOUR: "agg_1h_topic",
    Resolution.ONE_DAY: "agg_1d_topic",
}
_GRACE_VARIABLES: dict[str, str] = {
    Resolution.FIVE_SECONDS: "grace_5s",
    Resolution.ONE_HOUR: "grace_1h",
    Resolution.ONE_DAY: "grace_1d",
}


class StreamSettings(KafkaSettings, TelemetrySettings, RetrySettings):
    """The Faust worker that windows raw events."""

    compression: Literal["lz4", "gzip", "zstd", "snappy", "none"] = Field(
        default="zstd",
        # aiokafka's lz4 runs at level 9, six times slower than zstd's default level on the
        # worker's outputs, for a worse ratio.
        description="Compression of the batches the worker sends (outputs, changelog).",
    )

    # FLEETPULSE_AGG_TOPICS__1H=… sets one entry of the per-resolution mapping.
    model_config = SettingsConfigDict(env_nested_delimiter="__")

    kafka_sasl_username: str = Field(
        default="stream", description="Kafka user (principal) of this service."
    )
    stream_group: str = Field(
        default="fleetpulse-stream",
        description="Faust application id: the consumer group shared by all stream workers.",
    )
    grace: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Seconds each resolution's windows wait past their end, in their server's "
        "event time, for out-of-order samples, by resolution: `FLEETPULSE_GRACE__5S=1`, or a "
        "JSON object. A resolution not named waits the resolutions table's default (5 s); "
        "hourly and daily at least the 5 s grace.",
    )
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
    stream_sketches: bool = Field(
        default=True,
        description="Keep a quantile sketch of each metric per window, for the hourly and "
        "daily percentiles (p50 to p99) and the fleet-wide ones. Off: the rollups carry no "
        "percentiles, and the worker saves their cost (BENCHMARKS.md, stream worker).",
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
    agg_topics: dict[str, str] = Field(
        default_factory=dict,
        description="Output topic of each resolution's windows, by resolution: "
        "`FLEETPULSE_AGG_TOPICS__1H=…`, or a JSON object. A resolution not named goes to "
        "its topic in the resolutions table.",
    )
    status_topic: str = Field(default=STATUS.name, description="Output topic of status changes.")
    dlq_topic: str = Field(default=DLQ.name, description="Dead-letter topic.")
    # Per-resolution variables of earlier releases, still read; `agg_topics` wins.
    agg_5s_topic: str | None = Field(default=None, description="agg_topics 5s (older name).")
    agg_1h_topic: str | None = Field(default=None, description="agg_topics 1h (older name).")
    agg_1d_topic: str | None = Field(default=None, description="agg_topics 1d (older name).")
    grace_5s: float | None = Field(default=None, ge=0, description="grace 5s (older name).")
    grace_1h: float | None = Field(default=None, ge=0, description="grace 1h (older name).")
    grace_1d: float | None = Field(default=None, ge=0, description="grace 1d (older name).")

    @property
    def changelog_topic(self) -> str:
        """The group's compacted changelog (servers' clocks and hourly/daily windows, closed
        5 s windows kept for corrections), partitioned like the raw topic (created by the
        worker)."""
        return f"{self.stream_group}-rollups-changelog"

    @model_validator(mode="after")
    def _every_resolution(self) -> Self:
        """Complete the mappings: the table's defaults, the older variables, the mappings;
        the grace checked (each cascaded resolution's at least the first one's)."""
        older = {r: getattr(self, v) for r, v in _TOPIC_VARIABLES.items() if getattr(self, v)}
        self.agg_topics = per_resolution(lambda r: r.topic, older, self.agg_topics)
        older_grace = {
            r: getattr(self, v) for r, v in _GRACE_VARIABLES.items() if getattr(self, v) is not None
        }
        self.grace = dict(Grace({**older_grace, **self.grace}).by_resolution)
        return self
