"""`fleetpulse stream`: the Faust worker around `StreamProcessor`.

Faust is the runtime: worker lifecycle and signals, timers, the web server. The raw topic is
read in batches by an aiokafka consumer in the same consumer group protocol
(`FLEETPULSE_STREAM_GROUP`), because Faust's per-message stream costs more than the whole
windowing (about 2,500 events/s through a Faust agent on the development machine, against
about 15,000 in batches). The windowing is ours (`streams/windows.py`): Faust's windowed
tables lose data (a last-closed window shared by all partitions, closing by wall clock during
catch-up, late events dropped silently).

Outputs of each batch are sent as they are made. Every `FLEETPULSE_STREAM_CHECKPOINT_INTERVAL`
a checkpoint runs in three steps, each waiting for the previous one to be acknowledged: every
output sent so far; the changed state (each server's clocks and hourly/daily windows, its
closed 5 s windows kept for corrections) and a progress record per partition, to the group's
compacted changelog topic; the offsets, up to the oldest record a still-open 5 s window needs.
A worker that takes a partition over (after a crash or a rebalance) loads the partition's
changelog, then replays from the committed offset: open 5 s windows are rebuilt, the rest
continues from the checkpoint, nothing is lost (a window emitted after the last checkpoint is
emitted again, with the same content).

The wall clock closes the windows of quiet servers (`idle()`) and takes silent servers offline
only on partitions with nothing fetched and unprocessed: that is decided under the lock the
batch loop holds while processing, from the offset after the last record processed, never
from the consumer's position (which a fetch moves before its records are processed).
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaTimeoutError
from prometheus_client import Counter, Gauge

from runtime.kafka import KeyPartitioner
from runtime.telemetry import serve_metrics
from runtime.topics import create_topics
from schemas import Resolution
from schemas.topics import TopicSpec
from streams.processor import Outputs, StreamProcessor
from streams.settings import StreamSettings
from streams.windows import Grace

log = logging.getLogger(__name__)

RECEIVED = Counter("fleetpulse_stream_received", "Raw records consumed.")
SENT = Counter(
    "fleetpulse_stream_sent", "Windows emitted (first time or corrected).", ["resolution"]
)
DROPPED = Counter("fleetpulse_stream_dropped", "Records sent to the DLQ.", ["reason"])
LATE_ABSORBED = Counter(
    "fleetpulse_stream_late_absorbed",
    "Late samples absorbed as corrections of closed windows (within the lateness horizon).",
)
KEPT = Gauge("fleetpulse_stream_kept_windows", "Closed 5 s windows kept for corrections.")


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # The next owner (maybe this worker again) restores the partition's last checkpoint
        # and replays from its commit.
        self.worker.generation += 1
        for tp in revoked:
            self.worker.assigned.discard(tp.partition)
            self.worker.processor.revoke(tp.partition)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # The fetcher may already be reading them; the batch loop waits for this restore.
        await self.worker.restore_missing([tp.partition for tp in assigned])
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
            lateness_horizon=s.lateness_horizon,
        )
        self.agg_topics = s.agg_topics
        self._sent = {r: SENT.labels(resolution=r.value) for r in Resolution}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.changelog_reader: AIOKafkaConsumer | None = None
        self.assigned: set[int] = set()  # partitions owned and restored
        self.generation = 0  # rebalances so far
        self._restore_lock = asyncio.Lock()
        self.pending: list[asyncio.Future[object]] = []  # outputs not yet acknowledged
        self.last_checkpoint = time.monotonic()
        #: Per partition: batches fetched and not yet processed (the partition is not idle).
        self.in_flight: dict[int, int] = {}
        self.events_in = 0
        self._reported = 0
        self._late_absorbed = 0
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
        # Outputs and state go through a plain idempotent producer: Faust's per-message send
        # costs several times more, and every output is awaited before the commit anyway.
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            client_id=f"{s.kafka_client_id}-stream-out",
            acks="all",
            enable_idempotence=True,
            # zstd: aiokafka's lz4 runs at level 9, six times slower than zstd's default level
            # here, for a worse ratio.
            compression_type="zstd",
            linger_ms=5,
            max_batch_size=256 * 1024,
            partitioner=KeyPartitioner(),
        )
        reader = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            client_id=f"{s.kafka_client_id}-stream-changelog",
            enable_auto_commit=False,
            fetch_max_bytes=16 * 1024 * 1024,
        )
        await producer.start()
        await reader.start()
        self.producer, self.changelog_reader = producer, reader
        try:
            await self._ensure_changelog(producer)
            consumer.subscribe([s.raw_topic], listener=_Rebalance(self))
            await consumer.start()
            self.consumer = consumer
            try:
                await self._batches(consumer)
            finally:
                # A clean stop saves what it holds, so the next owner replays little.
                async with self._lock:
                    await asyncio.wait_for(self._checkpoint(), timeout=10)
        finally:
            self.consumer = self.producer = self.changelog_reader = None
            await consumer.stop()
            await reader.stop()
            await producer.stop()

    async def _batches(self, consumer: AIOKafkaConsumer) -> None:
        s = self.settings
        in_flight = self.in_flight
        while True:
            batch = await consumer.getmany(
                timeout_ms=int(s.stream_batch_within * 1000), max_records=s.stream_batch
            )
            # Before anything else can run: these partitions have records fetched and not
            # processed, so no tick may take them for idle until they are.
            for tp in batch:
                in_flight[tp.partition] = in_flight.get(tp.partition, 0) + 1
            try:
                await self._process(batch)
            finally:
                for tp in batch:
                    in_flight[tp.partition] -= 1

    async def _process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        generation = self.generation
        # The fetcher starts on new partitions while their changelog is still loading.
        await self.restore_missing([tp.partition for tp in batch])
        async with self._lock:
            if generation != self.generation:
                # A rebalance since the fetch reset positions to the committed offsets:
                # these records come again, into restored state.
                return
            now = time.time()
            out = Outputs()
            record = self.processor.record
            for tp, records in batch.items():
                p = tp.partition
                for r in records:
                    record(p, r.offset, r.key, r.value, now, out)
                self.events_in += len(records)
                RECEIVED.inc(len(records))
            await self._publish(out)

    async def _ensure_changelog(self, producer: AIOKafkaProducer) -> None:
        """Create the group's changelog, one partition per raw partition, if it is missing."""
        s = self.settings
        try:
            partitions = await producer.partitions_for(s.raw_topic)
        except KafkaTimeoutError:
            raise RuntimeError(
                f"raw topic {s.raw_topic!r} not found: create it with `fleetpulse topics create`"
            ) from None
        spec = TopicSpec(
            s.changelog_topic,
            partitions=len(partitions),
            retention_ms=-1,
            cleanup_policy="compact",
            description="hourly/daily state of the stream group, per raw partition",
            # Small segments keep the uncompacted tail, and so a takeover's read, short.
            extra_config={"segment.ms": "60000", "min.cleanable.dirty.ratio": "0.1"},
        )
        await create_topics(s.kafka_bootstrap, [spec], client_id=s.kafka_client_id)

    async def restore_missing(self, partitions: list[int]) -> None:
        """Restore the given partitions this worker owns but has not loaded yet (once each)."""
        consumer = self.consumer
        async with self._restore_lock:
            todo = sorted(
                p
                for p in set(partitions) - self.assigned
                if consumer is None
                or TopicPartition(self.settings.raw_topic, p) in consumer.assignment()
            )
            if todo:
                await self._restore(todo)

    async def _restore(self, partitions: list[int]) -> None:
        """Load the changelog of partitions this worker takes over, then own them."""
        reader = self.changelog_reader
        if reader is None or not partitions:
            return
        started = time.monotonic()
        tps = [TopicPartition(self.settings.changelog_topic, p) for p in partitions]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        latest: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
        waiting = {tp for tp in tps if ends[tp] > 0}
        while waiting:
            for tp, records in (await reader.getmany(*waiting, timeout_ms=1000)).items():
                state = latest[tp.partition]
                for r in records:
                    if r.key is None:
                        continue
                    if r.value is None:
                        state.pop(r.key, None)
                    else:
                        state[r.key] = r.value
            waiting = {tp for tp in waiting if await reader.position(tp) < ends[tp]}
        now = time.time()
        for p in partitions:
            self.processor.restore(p, latest[p], now)
            self.assigned.add(p)
        log.info(
            "restored partitions %s from %d changelog records in %.2f s",
            partitions,
            sum(ends.values()),
            time.monotonic() - started,
        )

    async def _tick(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        async with self._lock:
            now = time.time()
            caught_up = [
                tp.partition for tp in consumer.assignment() if await self._caught_up(consumer, tp)
            ]
            out = self.processor.tick(now, caught_up)
            for p in caught_up:
                out.extend(self.processor.idle(p, now))
            await self._publish(out)

    async def _caught_up(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
        """Whether every record of `tp` the broker had at the last fetch is processed (call
        under the lock)."""
        p = tp.partition
        if p not in self.assigned or self.in_flight.get(p, 0):
            return False
        high: int | None = consumer.highwater(tp)
        if high is None:
            return False
        done = self.processor.next_offsets.get(p)
        if done is None:  # nothing processed since the assignment, nothing in flight either
            done = int(await consumer.position(tp))
        return done >= high

    async def _report(self) -> None:
        rate = (self.events_in - self._reported) / 10.0
        self._reported = self.events_in
        partitions = self.processor.partitions.values()
        open_windows = sum(w.open_windows() for w in partitions)
        kept = sum(w.kept_windows() for w in partitions)
        KEPT.set(kept)
        counts = self.processor.counts()
        LATE_ABSORBED.inc(counts["late_absorbed"] - self._late_absorbed)
        self._late_absorbed = counts["late_absorbed"]
        log.info(
            "%.0f events/s in, %d open 5 s windows, %d kept for corrections; late samples "
            "so far: %d absorbed, %d beyond the horizon (dead-lettered)",
            rate,
            open_windows,
            kept,
            counts["late_absorbed"],
            counts["late_dropped"],
        )

    async def _publish(self, out: Outputs) -> None:
        """Send the outputs; checkpoint when the interval has passed."""
        producer = self.producer
        if producer is None:
            return
        s = self.settings
        send = producer.send
        pending = self.pending
        for a in out.aggregates:
            topic = self.agg_topics[a.resolution]
            pending.append(await send(topic, a.value, key=a.server_id.encode()))
            self._sent[a.resolution].inc()
        for c in out.statuses:
            pending.append(await send(s.status_topic, c.to_json_bytes(), key=c.server_id.encode()))
        for d in out.dead_letters:
            key = d.key.encode() if d.key is not None else None
            pending.append(await send(s.dlq_topic, d.to_json_bytes(), key=key))
            DROPPED.labels(reason=d.reason.value).inc()
        if time.monotonic() - self.last_checkpoint >= s.stream_checkpoint_interval:
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Outputs acknowledged → state acknowledged → offsets committed (see the module doc)."""
        producer, consumer = self.producer, self.consumer
        if producer is None or consumer is None:
            return
        self.last_checkpoint = time.monotonic()
        pending, self.pending = self.pending, []
        if pending:
            await asyncio.gather(*pending)  # a failed send raises: nothing is committed
        topic = self.settings.changelog_topic
        sends: list[asyncio.Future[object]] = []
        offsets: dict[TopicPartition, int] = {}
        for tp in consumer.assignment():
            p = tp.partition
            if p not in self.assigned:
                continue
            # One changelog partition per raw partition, written in order: a record there
            # implies every earlier one of the same checkpoint.
            for key, value in self.processor.checkpoint(p):
                sends.append(await producer.send(topic, value, key=key, partition=p))
            upto = self.processor.committable(p)
            if upto is not None:
                offsets[tp] = upto
        if sends:
            await asyncio.gather(*sends)
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("offsets not committed after a rebalance (%s); the new owner replays", exc)

    def run(self) -> None:
        """Run the worker until SIGTERM/SIGINT (Faust handles the signals)."""
        serve_metrics(self.settings.metrics_host, self.settings.metrics_port)
        worker = faust.Worker(self.app, loglevel="INFO", quiet=True)
        worker.execute_from_commandline()
