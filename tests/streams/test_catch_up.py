"""Integration: the catch-up race, against the real broker, repeated.

A worker drains a multi-partition backlog of events two hours old. Between every fetch and
the processing of what it fetched, a tick is forced with a clock a few seconds ahead, so that
each partition the fetch has just read to its end looks caught up and quiet to anyone who
judges by the consumer's position. The worker must judge by what it has processed: every 5 s
window comes out with all its samples and the DLQ stays empty. (With the rule of the previous
release, caught up = position ≥ high watermark, every run dead-letters events as `late`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import types
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

import streams.app
from runtime.settings import KafkaSettings
from runtime.topics import create_topics
from schemas.topics import TopicSpec
from streams.app import StreamWorker
from streams.settings import StreamSettings
from tests.streams.worker import Topics, by_window, collect, fleet_events, produce, records_in

pytestmark = pytest.mark.integration

HOSTS = 300
SECONDS = 20
PARTITIONS = 6
RUNS = 5


@pytest.fixture
async def topics(kafka_bootstrap: str) -> AsyncIterator[Topics]:
    s = uuid.uuid4().hex[:8]
    t = Topics(f"c.raw.{s}", f"c.a5.{s}", f"c.a1h.{s}", f"c.a1d.{s}", f"c.st.{s}", f"c.dlq.{s}")
    specs = [TopicSpec(n, PARTITIONS, 3_600_000) for n in vars(t).values()]
    await create_topics(KafkaSettings(kafka_bootstrap=kafka_bootstrap), specs)
    yield t


def with_forced_ticks(worker: StreamWorker, ahead: float) -> list[int]:
    """Make `worker` run a tick between every fetch and its processing, its clock `ahead`
    seconds in the future; returns the list the number of forced ticks is counted in."""
    forced = [0]
    fetched = worker.restore_missing  # awaited between the fetch and the processing

    async def fetched_then_tick(partitions: list[int]) -> None:
        await fetched(partitions)
        real = time.time
        ahead_clock = types.SimpleNamespace(time=lambda: real() + ahead, monotonic=time.monotonic)
        setattr(streams.app, "time", ahead_clock)  # noqa: B010 - the worker's clock only
        try:
            await worker._tick()
        finally:
            setattr(streams.app, "time", time)  # noqa: B010
        forced[0] += 1

    worker.restore_missing = fetched_then_tick  # type: ignore[method-assign]
    return forced


@pytest.mark.parametrize("run", range(RUNS))
async def test_catch_up_with_a_tick_between_fetch_and_processing_loses_nothing(
    kafka_bootstrap: str, topics: Topics, run: int
) -> None:
    servers = [str(uuid.uuid4()) for _ in range(HOSTS)]
    t0 = datetime.fromtimestamp((int(time.time()) - 7200) // 5 * 5, UTC)
    await produce(kafka_bootstrap, topics.raw, fleet_events(servers, t0, range(SECONDS)))
    settings = StreamSettings(
        kafka_bootstrap=kafka_bootstrap,
        stream_group=f"test-catchup-{uuid.uuid4().hex[:8]}",
        raw_topic=topics.raw,
        agg_5s_topic=topics.a5,
        agg_1h_topic=topics.a1h,
        agg_1d_topic=topics.a1d,
        status_topic=topics.status,
        dlq_topic=topics.dlq,
        stream_batch=400,  # many fetches, each ending a partition's backlog sooner or later
        offline_after=4,
    )
    worker = StreamWorker(settings)
    forced = with_forced_ticks(worker, ahead=3.0)
    task = asyncio.create_task(worker._consume())
    try:
        values = await collect(kafka_bootstrap, topics.a5, HOSTS * SECONDS // 5, distinct=True)
        hours = by_window(await collect(kafka_bootstrap, topics.a1h, HOSTS, distinct=True))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    fives = by_window(values)
    assert forced[0] >= PARTITIONS
    assert await records_in(kafka_bootstrap, topics.dlq, PARTITIONS) == 0
    assert len(fives) == HOSTS * SECONDS // 5
    short = [(k, w.count) for k, w in fives.items() if w.count != 5 or w.revision != 0]
    assert short == []
    per_server: dict[str, int] = {}
    for (sid, _), w in hours.items():
        per_server[sid] = per_server.get(sid, 0) + w.count
    assert per_server == dict.fromkeys(servers, SECONDS)
    assert all(start >= t0 - timedelta(hours=1) for _, start in hours)
