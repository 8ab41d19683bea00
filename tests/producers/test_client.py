"""The producer library: validation and the buffer (no broker), and delivery across a broker
outage (the real broker)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from infra.settings import StackSettings
from infra.stack import KafkaCluster
from producers import InvalidEvent, MetricProducer, ProducerSettings
from schemas import decode_raw_event
from schemas.topics import TopicSpec
from tests.factories import SERVER_ID, event_dict
from tests.kafka import read_all

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def _unreachable(buffer_size: int) -> ProducerSettings:
    # Never started here, so nothing is sent; the bootstrap address is never used.
    return ProducerSettings(kafka_bootstrap="127.0.0.1:9", buffer_size=buffer_size)


def test_invalid_event_names_the_field() -> None:
    producer = MetricProducer(_unreachable(10))
    with pytest.raises(InvalidEvent, match=r"cpu_usage: Input should be less than or equal to 100"):
        producer.send(event_dict(cpu_usage=150))
    with pytest.raises(InvalidEvent, match=r"network_rx"):
        producer.send(event_dict(network_rx=-1))
    with pytest.raises(InvalidEvent, match=r"not JSON-serialisable"):
        producer.send(event_dict(cpu_usage=object()))
    assert producer.stats.accepted == 0


def test_datetimes_and_models_are_accepted() -> None:
    producer = MetricProducer(_unreachable(10))
    producer.send(event_dict(timestamp=datetime(2026, 11, 25, tzinfo=UTC)))
    with pytest.raises(InvalidEvent, match="timestamp"):
        producer.send(event_dict(timestamp=datetime(2026, 11, 25)))  # naive
    assert producer.stats.accepted == 1 and producer.stats.buffered == 1


def test_overflow_drops_the_oldest_and_counts_exactly() -> None:
    producer = MetricProducer(_unreachable(5))
    for i in range(23):
        producer.send_encoded(SERVER_ID, b"%d" % i)
    stats = producer.stats
    assert (stats.accepted, stats.dropped, stats.buffered) == (23, 18, 5)
    assert [r.value for r in producer._buffer] == [b"18", b"19", b"20", b"21", b"22"]


@pytest.mark.integration
async def test_a_broker_restart_under_load_loses_nothing(
    stack_settings: StackSettings, new_topic: TopicSpec
) -> None:
    """A producer sending 1,000 events/s while the broker stops and starts again: every event
    arrives, once, and none is dropped while the buffer has room."""
    settings = ProducerSettings(
        kafka_bootstrap=stack_settings.kafka_bootstrap, retry_max=1.0, buffer_size=1_000_000
    )
    producer = MetricProducer(settings, topic=new_topic.name)
    broker = KafkaCluster(stack_settings)
    servers = [str(uuid.uuid4()) for _ in range(100)]
    sent = 0

    async def send_for(seconds: float) -> None:
        nonlocal sent
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            for sid in servers:  # 100 hosts, one second of theirs per 0.1 s
                producer.send(event_dict(server_id=sid, timestamp=T0 + timedelta(seconds=sent)))
            sent += 1
            await asyncio.sleep(0.1)

    await producer.start()
    try:
        await send_for(3)
        await asyncio.to_thread(broker.stop)
        try:
            await send_for(5)
        finally:
            await asyncio.to_thread(broker.start)
        await send_for(5)
        assert await producer.flush(90), producer.stats
    finally:
        await producer.stop()
    records = await read_all(stack_settings.kafka_bootstrap, new_topic.name, sent * 100)
    got = {(k, decode_raw_event(v).timestamp) for k, v in records}
    assert len(got) == sent * 100 and producer.stats.dropped == 0
