"""End to end, with the outages and lateness the field brings: the real agent cut off from the
broker for two minutes while the rest of the fleet keeps sending, and a producer (kcat) whose
events are 30 s behind the clock, sharing partitions with hosts that are not; and the broker
itself restarted under load. Afterwards every 5 s window of every host is in
`metrics_snapshots` with all the samples that reached the raw topic, and the DLQ is empty.

The agent reaches the broker through a relay (tests/e2e/relay.py) on the local broker's
proxied listener; cutting the relay fails its connections as a network outage would. The rest
connect directly.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.settings import StackSettings
from infra.stack import KafkaCluster
from producers.simulator import simulated_server_id
from tests.conftest import ROOT
from tests.e2e.pipeline import PARTITIONS, Pipeline, register, running_pipeline, wait_for
from tests.e2e.relay import Relay
from tests.factories import event_dict
from tests.kafka import SECURITY, kcat, produce, records_in

pytestmark = pytest.mark.integration

FLEET = 8  # hosts sending directly, on time
BEFORE = 15  # seconds of live load before the cut
CUT = 120  # seconds the agent's broker connection is down
AFTER = 25  # seconds of live load after it is back
BEHIND = 30  # how far the kcat host's clock is behind
SIM_HOSTS = 200  # the simulated fleet of the broker restart
SIM_SEED = 11


def event(server_id: str, at: float) -> bytes:
    ts = datetime.fromtimestamp(at, UTC).isoformat()
    return json.dumps(event_dict(server_id=server_id, timestamp=ts, cpu_usage=at % 100)).encode()


async def read_raw(bootstrap: str, topic: str) -> dict[str, list[float]]:
    """Every event in the raw topic, by server: their timestamps."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **SECURITY)
    await consumer.start()
    out: dict[str, list[float]] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for r in records:
                    e = json.loads(r.value)
                    ts = datetime.fromisoformat(e["timestamp"]).timestamp()
                    out.setdefault(e["server_id"], []).append(ts)
    finally:
        await consumer.stop()
    return out


def windows_of(timestamps: list[float]) -> dict[datetime, int]:
    counts: dict[datetime, int] = {}
    for ts in timestamps:
        start = datetime.fromtimestamp(int(ts // 5) * 5, UTC)
        counts[start] = counts.get(start, 0) + 1
    return counts


async def live_load(
    p: Pipeline, bootstrap: str, fleet: list[str], behind: str, until: Callable[[], bool]
) -> None:
    """Once a second: the fleet's events now (Python producer), and the lagging host's event
    of 30 s ago through one long-running kcat (`key|json` lines on its standard input)."""
    proc = await asyncio.create_subprocess_exec(
        *kcat(bootstrap, "-t", p.topics.raw, "-P", "-K", "|"),
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    second = int(time.time())
    try:
        while not until():
            await produce(bootstrap, p.topics.raw, [(s.encode(), event(s, second)) for s in fleet])
            proc.stdin.write(behind.encode() + b"|" + event(behind, second - BEHIND) + b"\n")
            await proc.stdin.drain()
            second += 1
            await asyncio.sleep(max(0.0, second - time.time()))
    finally:
        proc.stdin.close()
        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()


async def start_agent(p: Pipeline, server_id: str, port: int) -> asyncio.subprocess.Process:
    env = {
        **p.env(),
        "FLEETPULSE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "FLEETPULSE_SERVER_ID": server_id,
        "FLEETPULSE_TOP_PROCESSES": "3",
    }
    with (p.logs / "agent.log").open("wb") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "infra.cli", "agent",
            env=env, cwd=ROOT, stdout=log, stderr=log,
        )  # fmt: skip


async def test_an_agent_cut_off_for_two_minutes_and_a_host_behind_the_clock_lose_nothing(
    stack_settings: StackSettings, tmp_path: Path
) -> None:
    bootstrap = stack_settings.kafka_bootstrap
    relay = Relay(stack_settings.kafka_proxy_port, stack_settings.kafka_proxied_port)
    await relay.start()
    async with running_pipeline(stack_settings, tmp_path) as (p, token):
        fleet = [str(uuid.uuid4()) for _ in range(FLEET)]
        behind, agent_id = str(uuid.uuid4()), str(uuid.uuid4())
        await register(p, token, *fleet, behind, agent_id)
        agent = await start_agent(p, agent_id, stack_settings.kafka_proxy_port)
        done = False
        load = asyncio.create_task(live_load(p, bootstrap, fleet, behind, lambda: done))
        try:
            await asyncio.sleep(BEFORE)
            assert relay.connections > 0, "the agent never connected through the relay"
            cut_at = time.time()
            await relay.cut()
            await asyncio.sleep(CUT)
            await relay.restore()
            restored_at = time.time()
            await asyncio.sleep(AFTER)
            agent.send_signal(signal.SIGTERM)  # it delivers what it holds, then exits
            assert await asyncio.wait_for(agent.wait(), 60) == 0, p.log("agent")
        finally:
            done = True
            await load
            if agent.returncode is None:
                agent.kill()
            await relay.close()

        sent = await read_raw(bootstrap, p.topics.raw)
        # The agent sampled through the outage and its buffer reached the topic afterwards.
        during = [ts for ts in sent[agent_id] if cut_at + 1 <= ts <= restored_at - 1]
        assert len(during) >= CUT - 5, (len(during), p.log("agent"))
        expected = {sid: windows_of(sent[sid]) for sid in (*fleet, behind, agent_id)}
        conn = await p.connect()
        try:

            async def landed() -> dict[str, dict[datetime, int]] | None:
                got = await rows(conn, list(expected))
                return got if got == expected else None

            await wait_for_rows(landed, lambda: rows(conn, list(expected)), expected, p)
        finally:
            await conn.close()
        assert await records_in(bootstrap, p.topics.dlq, PARTITIONS) == 0, p.all_logs()


async def rows(conn: asyncpg.Connection, servers: list[str]) -> dict[str, dict[datetime, int]]:
    got: dict[str, dict[datetime, int]] = {sid: {} for sid in servers}
    for r in await conn.fetch(
        'SELECT server_id, "timestamp", sample_count FROM metrics_snapshots '
        "WHERE server_id = ANY($1::varchar[])",
        servers,
    ):
        got[r["server_id"]][r["timestamp"]] = r["sample_count"]
    return got


async def wait_for_rows(
    landed: Callable[[], Awaitable[object]],
    current: Callable[[], Awaitable[dict[str, dict[datetime, int]]]],
    expected: dict[str, dict[datetime, int]],
    p: Pipeline,
) -> None:
    try:
        await wait_for("every window of every host in metrics_snapshots", landed, timeout=90)
    except AssertionError:
        got = await current()
        wrong = {
            sid: {
                start.isoformat(): (n, got[sid].get(start))
                for start, n in windows.items()
                if got[sid].get(start) != n
            }
            for sid, windows in expected.items()
        }
        pytest.fail(f"windows missing or short (expected, got): {wrong}\n{p.all_logs()}")


async def test_a_broker_restart_under_load_keeps_every_service_up_and_loses_nothing(
    stack_settings: StackSettings, tmp_path: Path
) -> None:
    """The simulator (200 hosts), the stream worker, the sink and the registry run while the
    broker stops for 20 s and starts again. None of them exits: a send that fails makes the
    stream worker start over from its last checkpoint in place, with a new producer. Every
    window of every host then lands with every sample of the raw topic, nothing dead-lettered.
    (At the end every service must exit 0 on SIGTERM.)"""
    bootstrap = stack_settings.kafka_bootstrap
    broker = KafkaCluster(stack_settings)
    async with running_pipeline(stack_settings, tmp_path) as (p, token):
        hosts = [simulated_server_id(SIM_SEED, i) for i in range(SIM_HOSTS)]
        await register(p, token, *hosts)
        env = {**p.env(), "FLEETPULSE_HOSTS": str(SIM_HOSTS), "FLEETPULSE_SEED": str(SIM_SEED)}
        with (p.logs / "simulate.log").open("wb") as log:
            sim = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "infra.cli", "simulate",
                env=env, cwd=ROOT, stdout=log, stderr=log,
            )  # fmt: skip
        try:
            await asyncio.sleep(10)
            await asyncio.to_thread(broker.stop)
            try:
                await asyncio.sleep(20)
            finally:
                await asyncio.to_thread(broker.start)
            await asyncio.sleep(20)
            sim.send_signal(signal.SIGTERM)  # it delivers what it holds, then exits
            assert await asyncio.wait_for(sim.wait(), 60) == 0, p.log("simulate")
        finally:
            if sim.returncode is None:
                sim.kill()
        for name, proc in p.procs.items():
            assert proc.returncode is None, (name, p.log(name))
        sent = await read_raw(bootstrap, p.topics.raw)
        expected = {sid: windows_of(sent[sid]) for sid in hosts}
        conn = await p.connect()
        try:

            async def landed() -> dict[str, dict[datetime, int]] | None:
                got = await rows(conn, hosts)
                return got if got == expected else None

            await wait_for_rows(landed, lambda: rows(conn, hosts), expected, p)
        finally:
            await conn.close()
        assert await records_in(bootstrap, p.topics.dlq, PARTITIONS) == 0, p.all_logs()
