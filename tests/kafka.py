"""Reading and writing test topics on the real broker."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer


async def read_all(
    bootstrap: str, topic: str, expect: int, *, timeout: float = 60.0, settle: float = 2.0
) -> list[tuple[bytes, bytes]]:
    """The topic's records, in offset order per partition: read until `expect` have come (or
    `timeout`), then `settle` seconds more so that a duplicate would show."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[tuple[bytes, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        settled: float | None = None
        while loop.time() < (settled or deadline):
            batch = await consumer.getmany(timeout_ms=250)
            out.extend((r.key, r.value) for records in batch.values() for r in records)
            if settled is None and len(out) >= expect:
                settled = loop.time() + settle
    finally:
        await consumer.stop()
    return out
