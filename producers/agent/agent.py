"""`fleetpulse agent`: samples this host once per second and sends the events to Kafka."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from producers.agent.host import HostSampler
from producers.agent.sampling import next_tick
from producers.client import MetricProducer
from producers.settings import AgentSettings
from runtime.service import Service
from schemas import RawMetricEvent

log = logging.getLogger(__name__)


def sample_once(settings: AgentSettings, server_id: str) -> RawMetricEvent:
    """One event for this host, over a one-interval window (for `--once`)."""
    sampler = HostSampler(disk_mount=settings.disk_mount, top_processes=settings.top_processes)
    tick = next_tick(time.time(), settings.interval)
    time.sleep(max(0.0, tick - time.time()))
    try:
        return sampler.sample(server_id, datetime.fromtimestamp(tick, UTC))
    finally:
        sampler.close()


class Agent(Service):
    """Samples at every aligned tick until stopped; sending never holds up sampling."""

    name = "agent"

    def __init__(self, settings: AgentSettings, producer: MetricProducer | None = None) -> None:
        super().__init__()
        if settings.server_id is None:
            raise ValueError(
                "the agent needs this host's server id: --server-id or FLEETPULSE_SERVER_ID"
            )
        self.settings = settings
        self.server_id: str = settings.server_id
        self.producer = producer or MetricProducer(settings, component=self.name)
        self.sampler = HostSampler(
            disk_mount=settings.disk_mount, top_processes=settings.top_processes
        )
        self.samples = 0

    async def start(self) -> None:
        await self.producer.start()
        log.info(
            "agent started: server_id=%s every %.1f s to %s",
            self.server_id,
            self.settings.interval,
            self.settings.kafka_bootstrap,
        )

    async def run(self) -> None:
        """Sample until stopped."""
        while not self.stopping.is_set():
            tick = next_tick(time.time(), self.settings.interval)
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=max(0.0, tick - time.time()))
                break
            except TimeoutError:
                pass
            event = self.sampler.sample(self.server_id, datetime.fromtimestamp(tick, UTC))
            self.producer.send(event)
            self.samples += 1

    async def close(self) -> None:
        """Flush the buffer (bounded by `flush_timeout`)."""
        self.sampler.close()
        await self.producer.stop()
        stats = self.producer.stats
        log.info(
            "agent stopped: %d samples, %d sent, %d dropped, %d still buffered",
            self.samples,
            stats.sent,
            stats.dropped,
            stats.buffered,
        )
