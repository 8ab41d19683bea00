"""Helpers for tests that run `fleetpulse stream` against the real broker: topics of a test's
own, producing raw records, starting and stopping a worker subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from tests.conftest import ROOT


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


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def start_worker(bootstrap: str, topics: Topics, group: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        **topics.env(),
        "FLEETPULSE_KAFKA_BOOTSTRAP": bootstrap,
        "FLEETPULSE_STREAM_GROUP": group,
        "FLEETPULSE_OFFLINE_AFTER": "4",
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
