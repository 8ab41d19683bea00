"""A producer-library process with a spool, for tests that kill it (`python -m
tests.producers.spooler TOPIC MODE`; settings from the environment, FLEETPULSE_SPOOL_DIR set).

`send`: events for `--keys` servers round-robin, `--rate` per second, until killed; event n
is for server n % keys at second n // keys after T0. After every change it prints a line
`spooled S accepted A`: the first S events it accepted are on disk (fsync'd) by then.

`replay`: sends `--new` events of its own (at T1 on, after the replayed ones), waits until
everything, the spool's replay included, is acknowledged, and prints its stats as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import uuid
from datetime import UTC, datetime, timedelta

from producers import MetricProducer, ProducerSettings
from schemas import RawMetricEvent

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
T1 = T0 + timedelta(days=1)  # the replay run's own events


def server(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def event(key: int, second: int, base: datetime = T0) -> RawMetricEvent:
    return RawMetricEvent(
        server_id=server(key),
        timestamp=base + timedelta(seconds=second),
        cpu_usage=12.5,
        memory_usage=40.0,
        disk_usage=71.2,
        network_rx=1200,
        network_tx=800,
    )


async def send(producer: MetricProducer, keys: int, rate: float) -> None:
    n, last = 0, (-1, -1)
    step = max(1, int(rate / 50))  # 50 slices a second
    while True:
        for _ in range(step):
            producer.send(event(n % keys, n // keys))
            n += 1
        await asyncio.sleep(step / rate)
        stats = producer.stats
        if (stats.spooled, stats.accepted) != last:
            last = (stats.spooled, stats.accepted)
            print(f"spooled {stats.spooled} accepted {stats.accepted}", flush=True)


async def replay(producer: MetricProducer, keys: int, new: int) -> None:
    for i in range(new):
        producer.send(event(i % keys, i // keys, T1))
    delivered = await producer.flush(90)
    print(json.dumps({"delivered": delivered, **dataclasses.asdict(producer.stats)}), flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("topic")
    parser.add_argument("mode", choices=["send", "replay"])
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--new", type=int, default=100)
    args = parser.parse_args()
    settings = ProducerSettings(retry_max=0.5)
    assert settings.spool_dir is not None, "FLEETPULSE_SPOOL_DIR is not set"
    async with MetricProducer(settings, topic=args.topic) as producer:
        if args.mode == "send":
            await send(producer, args.keys, args.rate)
        else:
            await replay(producer, args.keys, args.new)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
