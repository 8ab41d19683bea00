"""Stream worker throughput: one `fleetpulse stream` process working through a backlog.

300,000 simulator events (6,000 hosts x 50 s, ~400 bytes each) are written to a fresh
6-partition raw topic first; then a worker starts and the clock runs until every 5 s window of
the backlog has been emitted (the worker's group has committed the end of every partition but
the last open windows). Broker and worker share the machine's cores. 3 runs, each on its own
topics and consumer group.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.common import row, stack_up
from infra.topics import create_topics
from producers import MetricProducer, SimulatorSettings
from producers.simulator import fleet, iso_second
from schemas.topics import TopicSpec

HOSTS = 6000
SECONDS = 50
EVENTS = HOSTS * SECONDS


async def _fill(bootstrap: str, topic: str) -> None:
    await create_topics(bootstrap, [TopicSpec(topic, 6, 3_600_000)])
    hosts = fleet(7, HOSTS, 3)
    templates = [h.template for h in hosts]
    settings = SimulatorSettings(kafka_bootstrap=bootstrap, hosts=HOSTS)
    async with MetricProducer(settings, topic=topic) as producer:
        t0 = int(time.time()) - 3600
        for t in range(t0, t0 + SECONDS):
            ts = iso_second(t)
            for i, h in enumerate(hosts):
                producer.send_encoded(h.server_id, h.event_json(t, ts, templates[i]))
            await asyncio.sleep(0)
        assert await producer.flush(300)


async def _count(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(6)]
        ends = await consumer.end_offsets(tps)
        return sum(ends.values())
    finally:
        await consumer.stop()


def one_run(bootstrap: str) -> float:
    tag = uuid.uuid4().hex[:8]
    raw = f"bench.raw.{tag}"
    outs = {k: f"bench.{k}.{tag}" for k in ("a5", "a1h", "a1d", "st", "dlq")}
    asyncio.run(_fill(bootstrap, raw))
    asyncio.run(create_topics(bootstrap, [TopicSpec(n, 6, 3_600_000) for n in outs.values()]))
    env = {
        **os.environ,
        "FLEETPULSE_KAFKA_BOOTSTRAP": bootstrap,
        "FLEETPULSE_STREAM_GROUP": f"bench-{tag}",
        "FLEETPULSE_RAW_TOPIC": raw,
        "FLEETPULSE_AGG_5S_TOPIC": outs["a5"],
        "FLEETPULSE_AGG_1H_TOPIC": outs["a1h"],
        "FLEETPULSE_AGG_1D_TOPIC": outs["a1d"],
        "FLEETPULSE_STATUS_TOPIC": outs["st"],
        "FLEETPULSE_DLQ_TOPIC": outs["dlq"],
    }
    # All 5 s windows but the ones the idle clock closes at the end: (SECONDS/5 - 1) per host.
    target = HOSTS * (SECONDS // 5 - 1)
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "stream"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while asyncio.run(_count(bootstrap, outs["a5"])) < target:
            if proc.poll() is not None:
                raise RuntimeError("the stream worker exited")
            time.sleep(0.5)
        elapsed = time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return EVENTS / elapsed


def run() -> str:
    settings = stack_up()
    rates = [one_run(settings.kafka_bootstrap) for _ in range(3)]
    return "\n".join(
        [
            "## Stream worker throughput",
            "",
            f"One `fleetpulse stream` worker through a backlog of {EVENTS:,} raw events "
            f"({HOSTS:,} hosts x {SECONDS} s) on 6 partitions, from process start (including "
            "joining the group) until the backlog's 5 s windows are emitted; 3 runs. The "
            "broker runs on the same 2 cores.",
            "",
            "| Measure | Median | Range |",
            "| --- | ---: | ---: |",
            row("Events/s, one worker, all three resolutions", rates, "{:,.0f}"),
            "",
            "Target 15,000 events/s per worker process. For reference, on this kind of machine "
            "a stateless Faust agent ran at about 13,000 events/s and Faust's own 5 s windowed "
            "table at about 4,000; this worker reads raw batches with aiokafka inside the Faust "
            "runtime (a Faust agent with the same windowing ran at about 2,500 events/s here).",
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
