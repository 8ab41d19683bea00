"""Integration: the 3-broker cluster itself. Topics are replicated three times with two in
sync for a write, an acknowledged write survives the loss of its partition's leader, and
`stack status` shows the quorum and the under-replicated partitions while a broker is down."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from infra import stack
from infra.settings import StackSettings
from infra.stack import KafkaCluster
from runtime import kafka
from runtime.topics import create_topics
from schemas.topics import TopicSpec

pytestmark = pytest.mark.integration


async def consume_all(settings: StackSettings, topic: str, expect: int) -> list[bytes]:
    """Partition 0 of `topic` from its start (no group: its coordinator may be the dead one)."""
    consumer = kafka.consumer(settings, "test")
    await consumer.start()
    out: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning(TopicPartition(topic, 0))
        async with asyncio.timeout(90):
            while len(out) < expect:
                batch = await consumer.getmany(timeout_ms=500)
                out += [r.value for records in batch.values() for r in records if r.value]
    finally:
        await consumer.stop()
    return out


async def health(settings: StackSettings) -> dict[str, str]:
    statuses = await asyncio.to_thread(stack.status, settings)
    return {st.name: f"{st.running} {st.address} {st.detail}" for st in statuses}


async def test_topics_get_three_replicas_and_two_in_sync(cluster_settings: StackSettings) -> None:
    name = f"cluster.{uuid.uuid4().hex[:8]}"
    await create_topics(cluster_settings, [TopicSpec(name, 3, 3_600_000)])
    admin = kafka.admin(cluster_settings)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([name])
        assert [len(p["replicas"]) for p in described["partitions"]] == [3, 3, 3]
        (configs,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        values = {c[0]: c[1] for c in configs.resources[0][4]}
        assert values["min.insync.replicas"] == "2"
    finally:
        await admin.delete_topics([name])
        await admin.close()


async def test_a_leader_killed_loses_no_acknowledged_write_and_status_shows_it(
    cluster_settings: StackSettings,
) -> None:
    """1,000 events are acknowledged (acks=all, idempotent); the leader of their partition is
    killed with -9; every one of them is still there, read from the two brokers left. Until
    the broker is back, `stack status` reports the partitions short of a replica."""
    name = f"cluster.{uuid.uuid4().hex[:8]}"
    await create_topics(cluster_settings, [TopicSpec(name, 1, 3_600_000)])
    cluster = KafkaCluster(cluster_settings)
    producer = kafka.producer(cluster_settings, "test")
    await producer.start()
    try:
        sent = [await producer.send(name, f"{i}".encode(), key=b"k") for i in range(1000)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    admin = kafka.admin(cluster_settings)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([name])
    finally:
        await admin.close()
    leader = cluster.node(described["partitions"][0]["leader"])
    assert leader.kill() is not None
    try:
        values = await consume_all(cluster_settings, name, 1000)
        assert values == [f"{i}".encode() for i in range(1000)]
        deadline = time.monotonic() + 60
        while not (await health(cluster_settings))["replicas"].startswith("False"):
            assert time.monotonic() < deadline, await health(cluster_settings)
            await asyncio.sleep(2)
        rows = await health(cluster_settings)
        assert rows[leader.name].startswith("False"), rows
        assert rows["quorum"].startswith("True leader kafka-"), rows
        assert rows["replicas"].startswith("False"), rows
    finally:
        await asyncio.to_thread(leader.start)
    deadline = time.monotonic() + 120
    while not (await health(cluster_settings))["replicas"].startswith("True"):
        assert time.monotonic() < deadline, await health(cluster_settings)
        await asyncio.sleep(2)
