"""Integration: the agent (and the producer library under it) against the real broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from infra.settings import StackSettings
from infra.stack import KafkaCluster
from producers import AgentSettings, MetricProducer, ProducerSettings
from producers.agent import Agent
from runtime.service import serve
from schemas import RAW, RawMetricEvent, decode_raw_event
from schemas.topics import TopicSpec
from tests.conftest import ROOT
from tests.e2e.relay import Relay
from tests.factories import event_dict
from tests.kafka import kcat, read_all

pytestmark = pytest.mark.integration


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
    task = asyncio.create_task(serve(agent, stop_timeout=settings.stop_timeout))
    await asyncio.sleep(5.5)
    agent.stop()
    assert await task == 0
    assert agent.producer.stats.sent == agent.samples
    records = await read_all(kafka_bootstrap, new_topic.name, agent.samples)
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
    task = asyncio.create_task(serve(agent, stop_timeout=settings.stop_timeout))
    broker = KafkaCluster(stack_settings)
    try:
        await asyncio.sleep(2.5)
        await asyncio.to_thread(broker.stop)
        tiny_id = str(uuid.uuid4())
        for i in range(20):
            tiny.send(event_dict(server_id=tiny_id, timestamp=f"2026-11-25T10:00:{i:02d}Z"))
        await asyncio.sleep(20)  # the agent keeps sampling into its buffer
    finally:
        await asyncio.to_thread(broker.start)
    await asyncio.sleep(3)
    agent.stop()
    assert await task == 0
    assert await tiny.flush(30)
    await tiny.stop()
    stats = agent.producer.stats
    assert (stats.sent, stats.dropped, stats.buffered) == (agent.samples, 0, 0)

    records = await read_all(bootstrap, new_topic.name, agent.samples + 5)
    mine = [decode_raw_event(v) for k, v in records if k == agent.server_id.encode()]
    assert len(mine) == agent.samples >= 24  # every sample, none twice
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
    """The real command, read back with a stock Kafka client (kcat)."""
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
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert b"agent stopped" in err
    reader = await asyncio.create_subprocess_exec(
        *kcat(kafka_bootstrap, "-C", "-t", RAW.name, "-o", "beginning", "-e", "-J"),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(reader.communicate(), timeout=60)
    records = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    got = [decode_raw_event(r["payload"].encode()) for r in records if r["key"] == server_id]
    assert len(got) >= 3
    _assert_consecutive(got)


async def test_an_agent_killed_during_an_outage_sends_its_spooled_samples_after_a_restart(
    stack_settings: StackSettings, new_topic: TopicSpec, tmp_path: Path
) -> None:
    """The real command with a spool, through a relay: connected, cut off for 6 s, killed
    with SIGKILL, started again with the broker back. Every second it sampled before the
    kill (bar the last, which may not have reached the disk) is on the topic, in order."""
    relay = Relay(stack_settings.kafka_proxy_port, stack_settings.kafka_proxied_port)
    await relay.start()
    server_id = str(uuid.uuid4())
    env = {
        **os.environ,
        "FLEETPULSE_KAFKA_BOOTSTRAP": f"127.0.0.1:{stack_settings.kafka_proxy_port}",
        "FLEETPULSE_RAW_TOPIC": new_topic.name,
        "FLEETPULSE_SPOOL_DIR": str(tmp_path / "spool"),
        "FLEETPULSE_TOP_PROCESSES": "3",
        "FLEETPULSE_RETRY_MAX": "0.5",
    }

    async def agent() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "infra.cli", "agent", "--server-id", server_id,
            env=env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

    first = await agent()
    second: asyncio.subprocess.Process | None = None
    try:
        for _ in range(300):  # (a busy machine starts it slowly)
            if relay.connections:
                break
            await asyncio.sleep(0.1)
        assert relay.connections > 0, "the agent never connected through the relay"
        await asyncio.sleep(2)
        await relay.cut()
        await asyncio.sleep(6 - (time.time() % 1) + 0.5)  # half-way between two samples
        killed_at = time.time()
        first.kill()
        await first.wait()
        await relay.restore()
        second = await agent()
        await asyncio.sleep(8)
        second.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(second.communicate(), timeout=30)
        assert second.returncode == 0, err.decode()[-3000:]
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
        await relay.close()
    records = await read_all(stack_settings.kafka_bootstrap, new_topic.name, 10)
    stamps = [decode_raw_event(v).timestamp.timestamp() for _, v in records]
    assert stamps == sorted(stamps), "out of order"
    before = sorted({t for t in stamps if t < killed_at})
    assert before, stamps
    # Every second from the first sample to the last one before the kill, none missing.
    assert before == [before[0] + i for i in range(len(before))], before
    assert killed_at - before[-1] < 1.5, (killed_at, before[-1])
    assert len(before) >= 7  # 2 s connected, 6 s cut off
    assert any(t > killed_at for t in stamps)  # and the second run's own samples after them
    assert len(stamps) - len(set(stamps)) <= 2  # at least once: a re-send is rare and small
