"""`fleetpulse stream`: the Faust worker around `StreamProcessor`.

Faust is the runtime: worker lifecycle and signals, the producer, timers, the web server. The
raw topic is read in batches by an aiokafka consumer in the same consumer group protocol
(`FLEETPULSE_STREAM_GROUP`), because Faust's per-message stream costs more than the whole
windowing (about 2,500 events/s through a Faust agent on the development machine, against
about 13,000 in batches). The windowing is ours (`streams/windows.py`): Faust's windowed
tables lose data (a last-closed window shared by all partitions, closing by wall clock during
catch-up, late events dropped silently).

Each batch is processed, its outputs are sent and flushed, and only then are offsets
committed — up to the oldest record a still-open 5 s window needs. After a crash the worker
replays from there: open 5 s windows are rebuilt, never lost (a window closed just before the
crash may be emitted twice).
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError

from schemas import Resolution
from streams.processor import Outputs, StreamProcessor
from streams.settings import StreamSettings
from streams.windows import Grace

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Windows of a partition that leaves are rebuilt by its new owner from the commit.
        for tp in revoked:
            self.worker.processor.revoke(tp.partition)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("assigned raw partitions %s", sorted(tp.partition for tp in assigned))


class StreamWorker:
    """The Faust app, the raw batch loop, the timers."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        s = settings
        datadir = s.home_dir / "stream" / s.stream_group
        datadir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            s.stream_group,
            broker=[f"kafka://{b}" for b in s.kafka_bootstrap.split(",")],
            store="memory://",
            datadir=str(datadir),
            topic_allow_declare=False,
            topic_disable_leader=True,
            web_enabled=s.stream_web_port > 0,
            web_port=s.stream_web_port or 6066,
            producer_acks=-1,
        )
        # Faust's own consumer has nothing to read: the raw batches come through `_consume`.
        self.app.producer_only = True
        self.processor = StreamProcessor(
            source_topic=s.raw_topic,
            grace=Grace(s.grace_5s, s.grace_1h, s.grace_1d),
            offline_after=s.offline_after,
        )
        self.agg_topics = {
            Resolution.FIVE_SECONDS: s.agg_5s_topic,
            Resolution.ONE_HOUR: s.agg_1h_topic,
            Resolution.ONE_DAY: s.agg_1d_topic,
        }
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.last_record: dict[int, float] = {}
        self.events_in = 0
        self._reported = 0
        self._lock = asyncio.Lock()  # the batch loop and the timers take turns
        self.app.task(self._consume)
        self.app.timer(1.0)(self._tick)
        self.app.timer(10.0)(self._report)

    async def _consume(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            client_id=f"{s.kafka_client_id}-stream",
            group_id=s.stream_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.stream_batch,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            fetch_max_bytes=16 * 1024 * 1024,
        )
        consumer.subscribe([s.raw_topic], listener=_Rebalance(self))
        # Outputs go through a plain idempotent producer: Faust's per-message send costs
        # several times more, and every output is awaited before the commit anyway.
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            client_id=f"{s.kafka_client_id}-stream-out",
            acks="all",
            enable_idempotence=True,
            compression_type="lz4",
            linger_ms=5,
            max_batch_size=256 * 1024,
        )
        await producer.start()
        await consumer.start()
        self.consumer, self.producer = consumer, producer
        try:
            while True:
                batch = await consumer.getmany(
                    timeout_ms=int(s.stream_batch_within * 1000), max_records=s.stream_batch
                )
                if not batch:
                    continue
                async with self._lock:
                    now = time.time()
                    out = Outputs()
                    for tp, records in batch.items():
                        for r in records:
                            out.extend(
                                self.processor.record(tp.partition, r.offset, r.key, r.value, now)
                            )
                        self.events_in += len(records)
                        self.last_record[tp.partition] = now
                    out.extend(self.processor.close_due(now))
                    await self._publish(out)
        finally:
            self.consumer = self.producer = None
            await consumer.stop()
            await producer.stop()

    async def _tick(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        async with self._lock:
            now = time.time()
            out = self.processor.tick(now)
            for tp in consumer.assignment():
                nxt = self.processor.next_offsets.get(tp.partition)
                high = consumer.highwater(tp)
                caught_up = nxt is not None and high is not None and nxt >= high
                quiet = now - self.last_record.get(tp.partition, 0.0) >= 1.0
                if caught_up and quiet:
                    out.extend(self.processor.idle(tp.partition, now))
            await self._publish(out)

    async def _report(self) -> None:
        rate = (self.events_in - self._reported) / 10.0
        self._reported = self.events_in
        open_windows = sum(w.open_windows() for w in self.processor.partitions.values())
        late = sum(w.late for w in self.processor.partitions.values())
        log.info("%.0f events/s in, %d open 5 s windows, %d late so far", rate, open_windows, late)

    async def _publish(self, out: Outputs) -> None:
        """Send the outputs, wait until Kafka has them all, then commit what is done."""
        producer = self.producer
        if producer is None:
            return
        s = self.settings
        sends: list[tuple[str, bytes | None, bytes]] = [
            (self.agg_topics[a.resolution], a.server_id.encode(), a.to_json_bytes())
            for a in out.aggregates
        ]
        sends += [(s.status_topic, c.server_id.encode(), c.to_json_bytes()) for c in out.statuses]
        sends += [
            (s.dlq_topic, d.key.encode() if d.key is not None else None, d.to_json_bytes())
            for d in out.dead_letters
        ]
        futures = [await producer.send(topic, value, key=key) for topic, key, value in sends]
        if futures:
            await asyncio.gather(*futures)  # a failed send raises: nothing is committed
        await self._commit()

    async def _commit(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        offsets = {}
        for tp in consumer.assignment():
            upto = self.processor.committable(tp.partition)
            if upto is not None:
                offsets[tp] = upto
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("offsets not committed after a rebalance (%s); the new owner replays", exc)

    def run(self) -> None:
        """Run the worker until SIGTERM/SIGINT (Faust handles the signals)."""
        worker = faust.Worker(self.app, loglevel="INFO", quiet=True)
        worker.execute_from_commandline()
