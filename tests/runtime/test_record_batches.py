"""Integration: `RecordBatches` against the real broker: every record lands once, on the
partition a stock client's `send()` picks for its key, in order per key, split over several
record batches when one is full."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from aiokafka.partitioner import DefaultPartitioner

from runtime import kafka
from runtime.settings import KafkaSettings
from schemas.topics import TopicSpec

pytestmark = pytest.mark.integration


async def test_records_land_where_send_puts_them_in_order(
    kafka_bootstrap: str, new_topic: TopicSpec
) -> None:
    settings = KafkaSettings(
        kafka_bootstrap=kafka_bootstrap,
        kafka_client_id="fleetpulse-test",
        kafka_max_batch_bytes=1024,  # a few records per batch: batches fill and split
    )
    producer = kafka.producer(settings, "batches")
    await producer.start()
    keys = [f"server-{i}".encode() for i in range(20)]
    records = [(keys[i % 20], f"{i}".encode()) for i in range(600)]
    try:
        batches = await kafka.RecordBatches.open(producer, [new_topic.name], kafka.KeyPartitioner())
        for key, value in records:
            batches.add(new_topic.name, key, value)
        assert batches.records == 600
        futures = await batches.send()
        assert len(futures) > new_topic.partitions  # some partition's records were split
        await asyncio.gather(*futures)
        assert await batches.send() == []  # sending empties it
    finally:
        await producer.stop()

    consumer = kafka.consumer(settings, "read", new_topic.name)
    await consumer.start()
    seen: dict[bytes, list[int]] = defaultdict(list)
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    try:
        got = 0
        for _ in range(200):
            for tp, rs in (await consumer.getmany(timeout_ms=250)).items():
                for r in rs:
                    assert r.key is not None and r.value is not None
                    seen[r.key].append(int(r.value))
                    partition_of[r.key].add(tp.partition)
                    got += 1
            if got >= 600:
                break
        await asyncio.sleep(1)  # a duplicate would show
        for rs in (await consumer.getmany(timeout_ms=500)).values():
            got += len(rs)
    finally:
        await consumer.stop()

    assert got == 600
    stock = DefaultPartitioner()
    partitions = list(range(new_topic.partitions))
    for i, key in enumerate(keys):
        assert seen[key] == list(range(i, 600, 20))  # every record, in order
        assert partition_of[key] == {stock(key, partitions, partitions)}
