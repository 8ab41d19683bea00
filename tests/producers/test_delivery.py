"""Integration: the agent and the producer library against the real broker."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.settings import StackSettings
from infra.stack import KafkaBroker
from producers import AgentSettings, MetricProducer, ProducerSettings
from producers.agent import Agent
from schemas import RAW, RawMetricEvent, decode_raw_event
from schemas.topics import TopicSpec
from tests.conftest import ROOT
from tests.schemas.test_messages import event_dict

pytestmark = pytest.mark.integration


async def read_all(bootstrap: str, topic: str, *, idle: float = 3.0) -> list[tuple[bytes, bytes]]:
    """Every record of a topic, in offset order per partition, until `idle` s bring nothing."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[tuple[bytes, bytes]] = []
    try:
        quiet = 0.0
        while quiet < idle:
            batch = await consumer.getmany(timeout_ms=500)
            got = [(r.key, r.value) for records in batch.values() for r in records]
            out.extend(got)
            quiet = 0.0 if got else quiet + 0.5
    finally:
        await consumer.stop()
    return out


def _agent_settings(bootstrap: str) -> AgentSettings:
    return AgentSettings(kafka_bootstrap=bootstrap, server_id=str(uuid.uuid4()), top_processes=5)


def _assert_consecutive(events: list[RawMetricEvent]) -> None:
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps)
    gaps = {b - a for a, b in itertools.pairwise(stamps)}
    assert gaps <= {timedelta(seconds=1)}, f"missing or repeated seconds: {sorted(gaps)}"
    assert all(s.microsecond == 0 for s in stamps)  # aligned to wall-clock seconds


async def test_agent_sends_one_event_per_second(kafka_bootstrap: str, new_topic: TopicSpec) -> None:
    settings = _agent_settings(kafka_bootstrap)
    agent = Agent(settings, MetricProducer(settings, topic=new_topic.name))
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(5.5)
    agent.stop()
    await task
    records = await read_all(kafka_bootstrap, new_topic.name)
    events = [decode_raw_event(v) for _, v in records]
    assert 5 <= len(events) <= 6 and len(events) == agent.samples
    assert {k for k, _ in records} == {agent.server_id.encode()}
    _assert_consecutive(events)
    assert all(0 <= e.cpu_usage <= 100 and e.processes for e in events[1:])


async def test_broker_outage_loses_nothing_and_overflow_is_counted(
    stack_settings: StackSettings, new_topic: TopicSpec
) -> None:
    bootstrap = stack_settings.kafka_bootstrap
    settings = _agent_settings(bootstrap)
    agent = Agent(settings, MetricProducer(settings, topic=new_topic.name))
    tiny = MetricProducer(
        ProducerSettings(kafka_bootstrap=bootstrap, buffer_size=5), topic=new_topic.name
    )
    await tiny.start()
    task = asyncio.create_task(agent.run())
    broker = KafkaBroker(stack_settings)
    try:
        await asyncio.sleep(2.5)
        await asyncio.to_thread(broker.stop)
        tiny_id = str(uuid.uuid4())
        for i in range(20):
            tiny.send(event_dict(server_id=tiny_id, timestamp=f"2026-11-25T10:00:{i:02d}Z"))
        await asyncio.sleep(10)  # the agent keeps sampling into its buffer
    finally:
        await asyncio.to_thread(broker.start)
    await asyncio.sleep(3)
    agent.stop()
    await task
    assert await tiny.flush(30)
    await tiny.stop()

    records = await read_all(bootstrap, new_topic.name)
    mine = [decode_raw_event(v) for k, v in records if k == agent.server_id.encode()]
    assert len(mine) == agent.samples >= 14  # every sample, none twice
    _assert_consecutive(mine)

    theirs = [decode_raw_event(v) for k, v in records if k == tiny_id.encode()]
    assert (tiny.stats.accepted, tiny.stats.sent, tiny.stats.dropped) == (20, 5, 15)
    assert [e.timestamp.second for e in theirs] == [15, 16, 17, 18, 19]  # the oldest went


def test_agent_once_prints_a_valid_event() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "infra.cli", "agent", "--once", "--server-id", str(uuid.uuid4())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    event = RawMetricEvent.model_validate_json(out.stdout)
    assert event.processes and 0 <= event.memory_usage <= 100


async def test_agent_command_flushes_on_sigterm(kafka_bootstrap: str) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    partitions = [TopicPartition(RAW.name, p) for p in range(RAW.partitions)]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for tp in partitions:  # resolve the end offsets now, before the agent writes
        await consumer.position(tp)
    server_id = str(uuid.uuid4())
    env = {**os.environ, "FLEETPULSE_KAFKA_BOOTSTRAP": kafka_bootstrap}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.cli",
        "agent",
        "--server-id",
        server_id,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.sleep(4.5)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, err
        assert b"agent stopped" in err
        got: list[RawMetricEvent] = []
        async with asyncio.timeout(20):
            while len(got) < 3:
                batch = await consumer.getmany(timeout_ms=500)
                got += [
                    decode_raw_event(r.value)
                    for records in batch.values()
                    for r in records
                    if r.key == server_id.encode()
                ]
        _assert_consecutive(got)
    finally:
        if proc.returncode is None:
            proc.kill()
        await consumer.stop()
