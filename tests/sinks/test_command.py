"""Integration: `fleetpulse sink` as operators run it, on the public topics and database."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from infra.settings import StackSettings
from schemas import AGG_5S
from tests.conftest import ROOT
from tests.sinks.helpers import add_server, aggregate

pytestmark = pytest.mark.integration


async def test_sink_command_writes_and_stops_cleanly(stack_settings: StackSettings) -> None:
    sid = str(uuid.uuid4())
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    conn = await asyncpg.connect(**stack_settings.connect_kwargs())
    try:
        await add_server(conn, sid)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "infra.cli", "sink",
            env={**os.environ, "FLEETPULSE_SINK_GROUP": f"test-{sid[:8]}"},
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        producer = AIOKafkaProducer(bootstrap_servers=stack_settings.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(6):
                agg = aggregate(sid, start + timedelta(seconds=5 * i), cpu=float(i))
                await producer.send_and_wait(AGG_5S.name, agg.to_json_bytes(), key=sid.encode())
        finally:
            await producer.stop()
        try:
            async with asyncio.timeout(60):
                while True:
                    n = await conn.fetchval(
                        "SELECT count(*) FROM metrics_snapshots WHERE server_id = $1", sid
                    )
                    if n == 6:
                        break
                    await asyncio.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, err
        assert b"sink stopped" in err
    finally:
        await conn.close()
