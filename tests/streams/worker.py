"""Helpers for tests that run `fleetpulse stream` against the real broker: topics of a test's
own, producing raw records, starting and stopping a worker subprocess, a fleet's events and
their reference windows, reading the windows back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer

from schemas import WindowAggregate
from tests.conftest import ROOT
from tests.factories import event_dict
from tests.kafka import SECURITY


@dataclass
class Topics:
    raw: str
    a5: str
    a1h: str
    a1d: str
    status: str
    dlq: str

    def env(self) -> dict[str, str]:
        return {
            "FLEETPULSE_RAW_TOPIC": self.raw,
            "FLEETPULSE_AGG_5S_TOPIC": self.a5,
            "FLEETPULSE_AGG_1H_TOPIC": self.a1h,
            "FLEETPULSE_AGG_1D_TOPIC": self.a1d,
            "FLEETPULSE_STATUS_TOPIC": self.status,
            "FLEETPULSE_DLQ_TOPIC": self.dlq,
        }


async def start_worker(
    bootstrap: str, topics: Topics, group: str, **settings: str
) -> asyncio.subprocess.Process:
    """`fleetpulse stream` on `topics`; `settings` are more FLEETPULSE_* variables
    (`lateness_horizon="30"`)."""
    env = {
        **os.environ,
        **topics.env(),
        "FLEETPULSE_KAFKA_BOOTSTRAP": bootstrap,
        "FLEETPULSE_STREAM_GROUP": group,
        "FLEETPULSE_OFFLINE_AFTER": "4",
        **{f"FLEETPULSE_{k.upper()}": v for k, v in settings.items()},
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "infra.cli", "stream",
        env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def stop_worker(proc: asyncio.subprocess.Process) -> str:
    """SIGTERM the worker if it still runs; its log (stderr) as text."""
    err = b""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return err.decode()


async def collect(
    bootstrap: str, topic: str, expect: int, timeout: float = 90, *, distinct: bool = False
) -> list[bytes]:
    """Read `topic` from the start until `expect` records (windows, if `distinct`) are in."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **SECURITY
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while (len(by_window(got)) if distinct else len(got)) < expect:
                batch = await consumer.getmany(timeout_ms=500)
                got += [r.value for rs in batch.values() for r in rs]
        batch = await consumer.getmany(timeout_ms=1500)  # anything beyond expected shows
        got += [r.value for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    return got


def fleet_events(
    servers: list[str], t0: datetime, seconds: range | list[int]
) -> list[tuple[bytes, bytes]]:
    """Each server's event for each second (cpu = (second + server index) % 100), in the
    order the hosts send them."""
    out = []
    for i in seconds:
        for n, sid in enumerate(servers):
            ts = (t0 + timedelta(seconds=i)).isoformat()
            value = event_dict(server_id=sid, timestamp=ts, cpu_usage=float((i + n) % 100))
            out.append((sid.encode(), json.dumps(value).encode()))
    return out


def expected_windows(
    servers: list[str], t0: datetime, seconds: list[int], size: int
) -> dict[tuple[str, datetime], tuple[int, float, float, float, int]]:
    """Reference aggregation of `fleet_events`: (server, start) → (count, cpu avg, min, max,
    rx sum), computed directly from the events."""
    cpus: dict[tuple[str, datetime], list[float]] = {}
    for i in seconds:
        at = t0 + timedelta(seconds=i)
        start = datetime.fromtimestamp(int(at.timestamp()) // size * size, UTC)
        for n, sid in enumerate(servers):
            cpus.setdefault((sid, start), []).append(float((i + n) % 100))
    rx = event_dict()["network_rx"]
    return {k: (len(v), sum(v) / len(v), min(v), max(v), rx * len(v)) for k, v in cpus.items()}


def by_window(values: list[bytes]) -> dict[tuple[str, datetime], WindowAggregate]:
    """Windows by (server, start), each at its highest revision (what the sink's upsert
    leaves), asserting that a revision emitted twice is identical."""
    revisions: dict[tuple[str, datetime, int], WindowAggregate] = {}
    windows: dict[tuple[str, datetime], WindowAggregate] = {}
    for v in values:
        agg = WindowAggregate.model_validate_json(v)
        seen = revisions.setdefault((agg.server_id, agg.window_start, agg.revision), agg)
        assert seen.model_dump(exclude={"emitted_at"}) == agg.model_dump(exclude={"emitted_at"})
        key = (agg.server_id, agg.window_start)
        if key not in windows or agg.revision > windows[key].revision:
            windows[key] = agg
    return windows
