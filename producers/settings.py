"""Settings of the producers (`FLEETPULSE_*` variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import AwareDatetime, Field, model_validator

from runtime.settings import KafkaSettings, ServiceSettings
from schemas.messages import MAX_PROCESSES, ServerId
from schemas.topics import RAW


class ProducerSettings(KafkaSettings, ServiceSettings):
    """Delivery settings shared by the agent, the simulator and the producer library."""

    kafka_sasl_username: str = Field(
        default="producer", description="Kafka user (principal) of this service."
    )
    raw_topic: str = Field(default=RAW.name, description="Topic the raw events are sent to.")
    buffer_size: int = Field(
        default=600,
        ge=1,
        description=(
            "Events kept while the broker is unreachable (600 = 10 minutes at 1 Hz). On "
            "overflow the oldest are dropped, counted and logged."
        ),
    )
    spool_dir: Path | None = Field(
        default=None,
        description=(
            "Folder of an on-disk spool: every event is also written there (in fsync'd "
            "batches) until Kafka acknowledges it, so what a producer holds survives its own "
            "crash or restart and is sent first when it starts again. Unset: memory only. One "
            "folder per producer process; created if missing."
        ),
    )
    spool_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=64 * 1024,
        description=(
            "Most bytes the spool's files may hold (64 MiB: about 20 hours of one agent's "
            "events, about 1 KB each). When full, new events are dropped, counted and logged; "
            "what is spooled stays. With a spool, this bound replaces `buffer_size`."
        ),
    )
    max_chunk: int = Field(
        default=2000,
        ge=1,
        description="Most events handed to the Kafka client at once (the rest wait in order).",
    )
    flush_timeout: float = Field(
        default=10.0, ge=0, description="Seconds a shutdown waits to deliver what is buffered."
    )
    # A producer retries sooner than the other services: it holds events in memory meanwhile.
    retry_min: float = Field(
        default=0.2, gt=0, description="First retry delay after the broker failed, s."
    )
    retry_max: float = Field(default=5.0, gt=0, description="Longest retry delay, s.")
    stop_timeout: float = Field(
        default=15.0,
        gt=0,
        description="Seconds a service has, after SIGTERM/SIGINT, to stop; more than "
        "`flush_timeout`, so the flush is never cut short.",
    )

    @model_validator(mode="after")
    def _flush_within_stop(self) -> Self:
        if self.flush_timeout >= self.stop_timeout:
            raise ValueError("flush_timeout must be less than stop_timeout")
        return self


class AgentSettings(ProducerSettings):
    """The host agent (`fleetpulse agent`)."""

    metrics_port: int = Field(
        default=9471, ge=0, le=65535, description="Port of /metrics and /health; 0 = off."
    )

    server_id: ServerId | None = Field(
        default=None,
        description="This host's id in the registry (UUID). Required to run the agent.",
    )
    disk_mount: str = Field(default="/", description="Mount whose space use is `disk_usage`.")
    top_processes: int = Field(
        default=10, ge=0, le=MAX_PROCESSES, description="How many top processes to report."
    )
    interval: float = Field(
        default=1.0, ge=0.1, le=60.0, description="Seconds between samples, aligned to the clock."
    )


class SimulatorSettings(ProducerSettings):
    """The fleet simulator (`fleetpulse simulate`)."""

    metrics_port: int = Field(
        default=9472, ge=0, le=65535, description="Port of /metrics and /health; 0 = off."
    )

    hosts: int = Field(default=200, ge=1, le=1_000_000, description="Simulated hosts.")
    buffer_size: int = Field(
        default=1_000_000,
        ge=1,
        description="Events kept while the broker is unreachable; the oldest go on overflow.",
    )
    seed: int = Field(default=42, description="Seed of the series; same seed, same fleet.")
    sim_processes: int = Field(
        default=3, ge=0, le=MAX_PROCESSES, description="Processes listed in each event."
    )
    max_lag: float = Field(
        default=5.0,
        gt=0,
        description="Seconds behind the clock before the simulator skips ahead (and says so).",
    )
    sim_start: AwareDatetime | None = Field(
        default=None,
        description="A time-lapse instead of the clock: the fleet's seconds from this time "
        "on (ISO 8601 with offset), `sim_speed` of them per wall-clock second, every one "
        "emitted (none skipped); `--duration` then counts simulated seconds. Fault drills "
        "use it to cross an hour and a day in minutes.",
    )
    sim_speed: float = Field(
        default=1.0, gt=0, le=100_000, description="Simulated seconds per second of a time-lapse."
    )
    sim_silent_host: int | None = Field(
        default=None,
        ge=0,
        description="A host (by index) that goes silent for a while, as a host that died "
        "would: nothing is sent for it from `sim_silent_after` seconds into the run, for "
        "`sim_silent_for` seconds. The demo uses it so that an absence alert fires and "
        "resolves.",
    )
    sim_silent_after: float = Field(
        default=60.0, ge=0, description="Seconds into the run the silent host goes quiet."
    )
    sim_silent_for: float = Field(
        default=90.0, gt=0, description="Seconds the silent host stays quiet."
    )
