"""Integration: produce and consume through the real broker with aiokafka, and with kcat."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from infra.topics import create_topics
from runtime.settings import KafkaSettings
from schemas import RawMetricEvent, decode_raw_event
from schemas.topics import TopicSpec
from tests.schemas.test_messages import event_dict

pytestmark = pytest.mark.integration


def _events(server_ids: list[str], n: int) -> list[RawMetricEvent]:
    t0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    return [
        RawMetricEvent(
            server_id=sid,
            timestamp=t0 + timedelta(seconds=i),
            cpu_usage=float(i % 100),
            memory_usage=50.0,
            disk_usage=60.0,
            network_rx=i,
            network_tx=2 * i,
        )
        for i in range(n)
        for sid in server_ids
    ]


async def _consume(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[tuple[bytes, bytes]] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < expected:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    got.extend((r.key, r.value) for r in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def test_produce_and_consume_keeps_per_server_order(
    kafka_bootstrap: str, new_topic: TopicSpec
) -> None:
    servers = [str(uuid.uuid4()) for _ in range(5)]
    sent = _events(servers, 40)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        futures = [
            await producer.send(new_topic.name, e.to_json_bytes(), key=e.server_id.encode())
            for e in sent
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()

    got = await _consume(kafka_bootstrap, new_topic.name, len(sent))
    assert len(got) == len(sent)
    received = [decode_raw_event(v) for _, v in got]
    assert sorted(received, key=lambda e: (e.server_id, e.timestamp)) == sorted(
        sent, key=lambda e: (e.server_id, e.timestamp)
    )
    for sid in servers:  # keyed by server_id: one partition per server, so in order
        mine = [e.timestamp for e in received if e.server_id == sid]
        assert mine == sorted(mine) and len(mine) == 40


async def test_topics_create_is_idempotent_and_applies_config(kafka_bootstrap: str) -> None:
    spec = TopicSpec(name=f"test.{uuid.uuid4().hex[:12]}", partitions=4, retention_ms=7_200_000)
    first = await create_topics(KafkaSettings(kafka_bootstrap=kafka_bootstrap), [spec])
    second = await create_topics(KafkaSettings(kafka_bootstrap=kafka_bootstrap), [spec])
    assert [(r.created, r.partitions) for r in first] == [(True, 4)]
    assert [(r.created, r.partitions) for r in second] == [(False, 4)]
    grown = await create_topics(
        KafkaSettings(kafka_bootstrap=kafka_bootstrap),
        [TopicSpec(spec.name, partitions=6, retention_ms=spec.retention_ms)],
    )
    assert grown[0].partitions == 6

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name)])
        entries = {e[0]: e[1] for e in resp.resources[0][4]}
    finally:
        await admin.close()
    assert entries["retention.ms"] == "7200000"


async def test_broker_refuses_automatic_topic_creation(kafka_bootstrap: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, request_timeout_ms=3000)
    await producer.start()
    try:
        with pytest.raises(Exception):  # noqa: B017 - aiokafka raises a timeout/unknown-topic error
            await asyncio.wait_for(producer.send_and_wait(f"nope.{uuid.uuid4().hex}", b"x"), 10)
    finally:
        await producer.stop()


async def test_kcat_produces_and_consumes(kafka_bootstrap: str, new_topic: TopicSpec) -> None:
    """A stock Kafka client (kcat, librdkafka) talks to the broker and the JSON contract."""
    event = event_dict(server_id=str(uuid.uuid4()))
    line = f"{event['server_id']}\t{json.dumps(event)}\n"
    await asyncio.to_thread(
        subprocess.run,
        ["kcat", "-b", kafka_bootstrap, "-P", "-t", new_topic.name, "-K", "\t"],
        input=line.encode(),
        check=True,
        timeout=30,
    )
    got = await _consume(kafka_bootstrap, new_topic.name, 1)
    assert got[0][0] == event["server_id"].encode()
    assert decode_raw_event(got[0][1]).server_id == event["server_id"]

    result = await asyncio.to_thread(
        subprocess.run,
        ["kcat", "-b", kafka_bootstrap, "-C", "-t", new_topic.name, "-o", "beginning", "-e", "-J"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    records = [json.loads(x) for x in result.stdout.decode().splitlines() if x.strip()]
    assert len(records) == 1 and records[0]["key"] == event["server_id"]
    assert json.loads(records[0]["payload"])["cpu_usage"] == event["cpu_usage"]
