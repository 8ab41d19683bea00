"""Reading and writing test topics on the real broker, with clients from the runtime's
factories."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiokafka import TopicPartition

from runtime import kafka
from runtime.settings import KafkaSettings, LazySecurity

#: What a test's own aiokafka client needs to connect (TLS, the `admin` user of the tests'
#: environment, which may read and write the tests' own topics).
SECURITY = LazySecurity()


def kcat(bootstrap: str, *args: str) -> list[str]:
    """A kcat command line as the tests' `admin` (TLS, SCRAM: the stack's client configuration
    for kcat), towards `bootstrap`: Debian's kcat with a librdkafka that can log in to Kafka 4
    (infra/kcat.py)."""
    config = KafkaSettings().home_dir / "secrets" / "kafka" / "admin.conf"
    return [str(Path(sys.prefix) / "bin" / "kcat"), "-F", str(config), "-b", bootstrap, *args]


def _settings(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(kafka_bootstrap=bootstrap, kafka_client_id="fleetpulse-test")


async def read_all(
    bootstrap: str, topic: str, expect: int, *, timeout: float = 60.0, settle: float = 2.0
) -> list[tuple[bytes, bytes]]:
    """The topic's records, in offset order per partition: read until `expect` have come (or
    `timeout`), then `settle` seconds more so that a duplicate would show."""
    consumer = kafka.consumer(_settings(bootstrap), "read", topic)
    await consumer.start()
    out: list[tuple[bytes, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        settled: float | None = None
        while loop.time() < (settled or deadline):
            batch = await consumer.getmany(timeout_ms=250)
            out.extend((r.key, r.value) for records in batch.values() for r in records)
            if settled is None and len(out) >= expect:
                settled = loop.time() + settle
    finally:
        await consumer.stop()
    return out


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = kafka.producer(_settings(bootstrap), "produce")
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def records_in(bootstrap: str, topic: str, partitions: int) -> int:
    """How many records `topic` (of `partitions` partitions) holds: the sum of its end
    offsets (a DLQ that must stay empty, say)."""
    consumer = kafka.consumer(_settings(bootstrap), "count")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()
