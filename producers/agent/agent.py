"""`fleetpulse agent`: samples this host once per second and sends the events to Kafka."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from datetime import UTC, datetime

from producers.agent.host import HostSampler
from producers.agent.sampling import next_tick
from producers.client import MetricProducer
from producers.settings import AgentSettings
from runtime.telemetry import serve_metrics
from schemas import RawMetricEvent

log = logging.getLogger(__name__)


def sample_once(settings: AgentSettings, server_id: str) -> RawMetricEvent:
    """One event for this host, over a one-interval window (for `--once`)."""
    sampler = HostSampler(disk_mount=settings.disk_mount, top_processes=settings.top_processes)
    tick = next_tick(time.time(), settings.interval)
    time.sleep(max(0.0, tick - time.time()))
    return sampler.sample(server_id, datetime.fromtimestamp(tick, UTC))


class Agent:
    """Samples at every aligned tick until `stop()`; sending never holds up sampling."""

    def __init__(self, settings: AgentSettings, producer: MetricProducer | None = None) -> None:
        if settings.server_id is None:
            raise ValueError(
                "the agent needs this host's server id: --server-id or FLEETPULSE_SERVER_ID"
            )
        self.settings = settings
        self.server_id: str = settings.server_id
        self.producer = producer or MetricProducer(settings)
        self.sampler = HostSampler(
            disk_mount=settings.disk_mount, top_processes=settings.top_processes
        )
        self.samples = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Sample until stopped, then flush the buffer (bounded by `flush_timeout`)."""
        await self.producer.start()
        log.info(
            "agent started: server_id=%s every %.1f s to %s",
            self.server_id,
            self.settings.interval,
            self.settings.kafka_bootstrap,
        )
        try:
            while not self._stop.is_set():
                tick = next_tick(time.time(), self.settings.interval)
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, tick - time.time()))
                    break
                except TimeoutError:
                    pass
                event = self.sampler.sample(self.server_id, datetime.fromtimestamp(tick, UTC))
                self.producer.send(event)
                self.samples += 1
        finally:
            await self.producer.stop()
            stats = self.producer.stats
            log.info(
                "agent stopped: %d samples, %d sent, %d dropped, %d still buffered",
                self.samples,
                stats.sent,
                stats.dropped,
                stats.buffered,
            )


async def run_agent(settings: AgentSettings) -> None:
    """Run until SIGTERM or SIGINT."""
    serve_metrics(settings.metrics_host, settings.metrics_port)
    agent = Agent(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    await agent.run()
