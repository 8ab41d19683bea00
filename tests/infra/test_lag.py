"""`fleetpulse lag` against the real broker: committed against end offsets, per group and topic."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from runtime.settings import KafkaSettings
from runtime.topics import create_topics
from schemas.topics import TopicSpec
from tests.conftest import ROOT
from tests.kafka import SECURITY, produce

pytestmark = pytest.mark.integration


async def test_lag_counts_what_each_group_has_not_committed(kafka_bootstrap: str) -> None:
    s = uuid.uuid4().hex[:8]
    raw, a5, a1h, a1d, status, dlq = (
        f"lag.{n}.{s}" for n in ("raw", "a5", "a1h", "a1d", "st", "dlq")
    )
    await create_topics(
        KafkaSettings(kafka_bootstrap=kafka_bootstrap),
        [TopicSpec(t, 2, 3_600_000) for t in (raw, a5, a1h, a1d, status, dlq)],
    )
    await produce(kafka_bootstrap, raw, [(f"k{i}".encode(), b"{}") for i in range(10)])
    await produce(kafka_bootstrap, a5, [(b"k", b"{}")] * 3)
    await produce(kafka_bootstrap, dlq, [(b"k", b"{}")] * 2)
    stream_group, sink_group = f"lag-stream-{s}", f"lag-sink-{s}"
    # The stream group has consumed and committed partition 0, and nothing of partition 1.
    ends = await _ends(kafka_bootstrap, raw)
    consumer = AIOKafkaConsumer(
        **SECURITY,
        bootstrap_servers=kafka_bootstrap,
        group_id=stream_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    consumer.assign([TopicPartition(raw, 0), TopicPartition(raw, 1)])
    try:
        await consumer.commit({TopicPartition(raw, 0): ends[TopicPartition(raw, 0)]})
    finally:
        await consumer.stop()
    behind = ends[TopicPartition(raw, 1)]

    env = {
        **os.environ,
        "FLEETPULSE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FLEETPULSE_RAW_TOPIC": raw,
        "FLEETPULSE_AGG_5S_TOPIC": a5,
        "FLEETPULSE_AGG_1H_TOPIC": a1h,
        "FLEETPULSE_AGG_1D_TOPIC": a1d,
        "FLEETPULSE_STATUS_TOPIC": status,
        "FLEETPULSE_DLQ_TOPIC": dlq,
        "FLEETPULSE_STREAM_GROUP": stream_group,
        "FLEETPULSE_SINK_GROUP": sink_group,
        "FLEETPULSE_REGISTRY_GROUP": f"lag-registry-{s}",
    }
    done = await asyncio.to_thread(_lag, env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    stream_line = next(line for line in lines if line.startswith(stream_group))
    assert stream_line.split()[1:5] == [raw, "2", "10", str(behind)]
    assert "1 partitions never committed" in stream_line
    assert any(line.startswith(sink_group) and "no committed offsets" in line for line in lines)
    assert f"dead letters in {dlq}: 2 written, 2 still held" in lines


def test_lag_says_when_the_broker_is_unreachable() -> None:
    done = _lag({**os.environ, "FLEETPULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert done.returncode == 1
    assert "fleetpulse: error: Kafka at 127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr


def _lag(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "lag"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def _ends(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **SECURITY)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(
            [TopicPartition(topic, p) for p in range(2)]
        )
        return ends
    finally:
        await consumer.stop()
