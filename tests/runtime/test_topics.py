"""Integration: topics created as their specs say, on the real broker."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from runtime.settings import KafkaSettings
from runtime.topics import create_topics
from schemas.topics import TopicSpec
from tests.kafka import SECURITY

pytestmark = pytest.mark.integration


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

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, **SECURITY)
    await admin.start()
    try:
        [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name)])
        entries = {e[0]: e[1] for e in resp.resources[0][4]}
    finally:
        await admin.close()
    assert entries["retention.ms"] == "7200000"
