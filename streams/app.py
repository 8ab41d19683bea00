"""`fleetpulse stream`: the Faust worker around `StreamProcessor`.

- Faust runs the worker: its lifecycle and signals, the 1 s and 10 s timers, and its web
  server, which serves /metrics and /health in the common vocabulary (`runtime/telemetry.py`).
- aiokafka, through `runtime/kafka.py`, reads the raw topic in batches (in the consumer group
  `FLEETPULSE_STREAM_GROUP`) and writes the outputs and the changelog. Faust's per-message
  stream costs more than the whole windowing (about 2,500 events/s through a Faust agent on
  the development machine, against about 15,000 in batches).
- The windowing is ours (`streams/windows.py`): Faust's windowed tables lose data (a
  last-closed window shared by all partitions, closing by wall clock during catch-up, late
  events dropped silently).

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
import contextlib
import logging
import socket
import time
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaTimeoutError,
    TopicAuthorizationFailedError,
)
from prometheus_client import Counter, Gauge

from runtime import kafka
from runtime.backoff import Backoff
from runtime.errors import describe
from runtime.kafka import KAFKA_ERRORS, KeyPartitioner, RecordBatches
from runtime.logs import configure_logging
from runtime.telemetry import health_body, metrics_body, telemetry
from runtime.topics import create_topics
from schemas import DeadLetterReason, Resolution
from schemas.topics import changelog_topic
from streams.processor import Outputs, StreamProcessor
from streams.settings import StreamSettings
from streams.windows import Grace

log = logging.getLogger(__name__)

TELEMETRY = telemetry("stream")
_STOP_ERRORS: tuple[type[BaseException], ...] = (*KAFKA_ERRORS, TimeoutError)
LATE_ABSORBED = Counter(
    "fleetpulse_stream_late_absorbed",
    "Late samples absorbed as corrections of closed windows (within the lateness horizon).",
)
DUPLICATES = Counter(
    "fleetpulse_stream_duplicates",
    "Samples dropped because their window already held one of the same server and timestamp "
    "(a producer's retry, a spool re-sent); not dead-lettered.",
)
KEPT = Gauge("fleetpulse_stream_kept_windows", "Closed 5 s windows kept for corrections.")
CHECKPOINTED = Gauge(
    "fleetpulse_stream_last_checkpoint_timestamp_seconds",
    "When the worker's last checkpoint completed (outputs and state acknowledged, offsets "
    "committed), Unix time; the worker's start until the first.",
)


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
            broker_credentials=_faust_credentials(s),
            store="memory://",
            datadir=str(datadir),
            topic_allow_declare=False,
            topic_disable_leader=True,
            web_enabled=_can_listen(s.metrics_host, s.metrics_port),
            web_bind=s.metrics_host,
            web_port=s.metrics_port or 6066,
            producer_acks=-1,
        )
        # Faust's own consumer has nothing to read: the raw batches come through `_consume`.
        self.app.producer_only = True
        self.processor = StreamProcessor(
            source_topic=s.raw_topic,
            grace=Grace(s.grace),
            offline_after=s.offline_after,
            lateness_horizon=s.lateness_horizon,
            sketches=s.stream_sketches,
        )
        self.agg_topics = s.agg_topics
        self._out_topics = [*self.agg_topics.values(), s.status_topic, s.dlq_topic]
        self._partitioner = KeyPartitioner()
        TELEMETRY.declare(
            outputs=[r.value for r in Resolution],
            reasons=[r.value for r in DeadLetterReason],
            kinds=["kafka"],
        )
        self._sent = {r: TELEMETRY.sent.labels(output=r.value) for r in Resolution}
        self._sent_status = TELEMETRY.sent.labels(output="status")
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.changelog_reader: AIOKafkaConsumer | None = None
        self.assigned: set[int] = set()  # partitions owned and restored
        self.generation = 0  # rebalances so far
        self._restore_lock = asyncio.Lock()
        self.pending: list[asyncio.Future[object]] = []  # outputs not yet acknowledged
        self.last_checkpoint = time.monotonic()
        CHECKPOINTED.set_to_current_time()  # a worker just started is not behind
        #: Per partition: batches fetched and not yet processed (the partition is not idle).
        self.in_flight: dict[int, int] = {}
        self.events_in = 0
        self._reported = 0
        self._late_absorbed = 0
        self._duplicates = 0
        self._lock = asyncio.Lock()  # the batch loop and the timers take turns
        self._kafka = TELEMETRY.outage("kafka", log)
        self._backoff = Backoff(s.retry_min, s.retry_max, probe_every=s.retry_probe_every)
        self.app.task(self._consume)
        self.app.timer(1.0)(self._tick)
        self.app.timer(10.0)(self._report)
        self.app.page("/metrics")(_metrics_page)
        self.app.page("/health")(_health_page)

    async def _consume(self) -> None:
        s = self.settings
        configure_logging()  # again: Faust's worker set up its own handlers
        consumer = kafka.consumer(
            s, "stream", group=s.stream_group, max_poll_records=s.stream_batch
        )
        # Outputs and state go through a plain idempotent producer: Faust's per-message send
        # costs several times more, and every output is awaited before the commit anyway.
        reader = kafka.consumer(s, "stream-changelog")
        self.producer = await self._start_producer()
        await reader.start()
        self.changelog_reader = reader
        try:
            await self._ensure_changelog(self.producer)
            consumer.subscribe([s.raw_topic], listener=_Rebalance(self))
            await consumer.start()
            self.consumer = consumer
            try:
                await self._batches(consumer)
            finally:
                # A clean stop saves what it holds, so the next owner replays little.
                async with self._lock:
                    try:
                        await asyncio.wait_for(self._checkpoint(), timeout=10)
                    except _STOP_ERRORS as exc:
                        log.warning(
                            "no checkpoint at the stop (%s): the next owner replays "
                            "from the last one",
                            describe(exc),
                        )
        finally:
            producer = self.producer
            self.consumer = self.producer = self.changelog_reader = None
            await consumer.stop()
            await reader.stop()
            if producer is not None:
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
            take = self.processor.records
            started = time.perf_counter()
            for tp, records in batch.items():
                take(tp.partition, records, now, out)
                self.events_in += len(records)
                TELEMETRY.received.inc(len(records))
            await self._publish_or_recover(out)
            TELEMETRY.batch_seconds.observe(time.perf_counter() - started)

    async def _ensure_changelog(self, producer: AIOKafkaProducer) -> None:
        """Create the group's changelog, one partition per raw partition, if it is missing."""
        s = self.settings
        try:
            partitions = await producer.partitions_for(s.raw_topic)
        except KafkaTimeoutError:
            raise RuntimeError(
                f"raw topic {s.raw_topic!r} not found: create it with `fleetpulse topics create`"
            ) from None
        spec = changelog_topic(s.changelog_topic, len(partitions))
        try:
            await create_topics(s, [spec])
        except TopicAuthorizationFailedError:
            raise RuntimeError(
                f"changelog topic {s.changelog_topic!r} is missing and Kafka user "
                f"{s.kafka_sasl_username!r} may not create it: create it with "
                "`fleetpulse topics create`"
            ) from None

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
            await self._publish_or_recover(out)

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
        TELEMETRY.lag.set(self._lag())
        counts = self.processor.counts()
        LATE_ABSORBED.inc(counts["late_absorbed"] - self._late_absorbed)
        self._late_absorbed = counts["late_absorbed"]
        DUPLICATES.inc(counts["duplicates"] - self._duplicates)
        self._duplicates = counts["duplicates"]
        log.info(
            "%.0f events/s in, %d open 5 s windows, %d kept for corrections; late samples "
            "so far: %d absorbed, %d beyond the horizon (dead-lettered); %d duplicates dropped",
            rate,
            open_windows,
            kept,
            counts["late_absorbed"],
            counts["late_dropped"],
            counts["duplicates"],
        )

    def _lag(self) -> int:
        """Raw records between what this worker has processed and the end of its partitions
        (as of the last fetch)."""
        consumer = self.consumer
        if consumer is None:
            return 0
        total = 0
        for tp in consumer.assignment():
            high, done = consumer.highwater(tp), self.processor.next_offsets.get(tp.partition)
            if high is not None and done is not None:
                total += max(0, high - done)
        return total

    async def _publish_or_recover(self, out: Outputs) -> None:
        """`_publish`, and when a send fails, `_recover` (call under the lock)."""
        try:
            await self._publish(out)
        except KAFKA_ERRORS as exc:
            await self._recover(exc)
        else:
            self._kafka.ok()

    async def _recover(self, exc: BaseException) -> None:
        """After a failed send, start over from the last checkpoint, as a restarted worker
        would, without restarting (call under the lock).

        Nothing after the last commit is trusted: the unacknowledged outputs are dropped
        (the replay emits them again, with the same content), every owned partition's state
        is forgotten, restored from its changelog and replayed from the offset its checkpoint
        committed (`_rewind`). The producer is replaced: aiokafka's idempotent producer gave
        the failed batches their sequence numbers, and refuses every later send with
        OutOfOrderSequenceNumber."""
        TELEMETRY.errors.labels(kind="kafka").inc()
        self._kafka.failed(exc, detail="starting over from the last checkpoint")
        self.pending = []
        consumer, old = self.consumer, self.producer
        self.producer = None  # nothing is published until the state is back
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), 5)
        self.producer = await self._start_producer()
        if consumer is None:
            return
        owned = sorted(self.assigned)
        for p in owned:
            self.processor.revoke(p)
            self.assigned.discard(p)
        # The fetcher goes on reading from where the batch loop was meanwhile; what it
        # delivers before `_rewind` is dropped there, and read again after it.
        await self.restore_missing(owned)
        await self._rewind(consumer, owned)
        self.last_checkpoint = time.monotonic()
        log.info("restarted partitions %s from their last checkpoint", owned)

    async def _rewind(self, consumer: AIOKafkaConsumer, partitions: list[int]) -> None:
        """Move the restored `partitions` back to where the replay of their restored state
        starts, and drop every batch fetched before (call under the lock, after the restore).

        That offset is the one the restored checkpoint committed, as its progress record
        names it; the group coordinator is asked only for a changelog of a previous release
        (whose progress record does not). Not `seek_to_committed`: just after a restart of
        the whole cluster the coordinator answers, for a moment, that nothing was committed,
        and `seek_to_committed` then leaves the position where the fetch had taken it, past
        records the restored state does not hold; the batch fetched from there is dropped
        as stale, and those records were never read again. With no offset known at all, the
        partition starts over from its first record (the group's `auto_offset_reset`): the
        replay skips what the state holds, and nothing is lost."""
        tps = [tp for tp in consumer.assignment() if tp.partition in partitions]
        starts: dict[TopicPartition, int] = {}
        unknown: list[TopicPartition] = []
        for tp in tps:
            offset = self.processor.replay_from.get(tp.partition)
            if offset is None:
                offset = await consumer.committed(tp)
            if offset is None:
                unknown.append(tp)
            else:
                starts[tp] = offset
        if unknown:
            starts.update(await consumer.beginning_offsets(unknown))
        # No await from the first seek to the new generation: a batch the batch loop got
        # before it is dropped (`_process`), and every batch after it is from the new
        # position.
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        self.generation += 1

    async def _start_producer(self) -> AIOKafkaProducer:
        """A started producer for outputs and state, waiting while the broker is away."""
        probe = kafka.broker_probe(self.settings)
        while True:
            producer = kafka.producer(self.settings, "stream-out")
            try:
                await producer.start()
            except KAFKA_ERRORS as exc:
                self._kafka.failed(exc)
                with contextlib.suppress(Exception):
                    await producer.stop()
                await self._backoff.wait(probe)
                continue
            self._backoff.reset()
            return producer

    async def _publish(self, out: Outputs) -> None:
        """Send the outputs; checkpoint when the interval has passed."""
        producer = self.producer
        if producer is None:
            return
        s = self.settings
        batches = await RecordBatches.open(producer, self._out_topics, self._partitioner)
        add, topics = batches.add, self.agg_topics
        sent = dict.fromkeys(self._sent, 0)
        for a in out.aggregates:
            add(topics[a.resolution], a.server_id.encode(), a.value)
            sent[a.resolution] += 1
        for resolution, n in sent.items():
            if n:
                self._sent[resolution].inc(n)
        for c in out.statuses:
            add(s.status_topic, c.server_id.encode(), c.to_json_bytes())
            self._sent_status.inc()
        for d in out.dead_letters:
            add(s.dlq_topic, d.key.encode() if d.key is not None else None, d.to_json_bytes())
            TELEMETRY.dropped.labels(reason=d.reason.value).inc()
        self.pending += await batches.send()
        if time.monotonic() - self.last_checkpoint >= s.stream_checkpoint_interval:
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Outputs acknowledged → state acknowledged → offsets committed (see the module doc)."""
        producer, consumer = self.producer, self.consumer
        if producer is None or consumer is None:
            return
        self.last_checkpoint = time.monotonic()
        pending, self.pending = self.pending, []
        await _acknowledged(pending)  # a failed send raises: nothing is committed
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
        await _acknowledged(sends)
        if offsets:
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                TELEMETRY.errors.labels(kind="kafka").inc()
                log.warning(
                    "offsets not committed after a rebalance (%s); the new owner replays", exc
                )
                return
        CHECKPOINTED.set_to_current_time()

    def run(self) -> None:
        """Run the worker until SIGTERM/SIGINT (Faust handles the signals; exits the process)."""
        worker = faust.Worker(self.app, loglevel="INFO", quiet=True)
        worker.execute_from_commandline()


async def _acknowledged(sends: list[asyncio.Future[object]]) -> None:
    """Wait until every send is acknowledged; the first failure raises. One by one, not with
    `gather`: the futures of a batch resolve together, and `gather` would hang a callback
    on each of the tens of thousands a checkpoint waits for."""
    for f in sends:
        if f.done():
            f.result()
        else:
            await f


def _faust_credentials(settings: StreamSettings) -> faust.auth.Credentials | None:
    """The settings' Kafka security (TLS, the SCRAM user) in Faust's terms."""
    security = settings.kafka_security()
    protocol = security["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(security["ssl_context"])
    return faust.SASLCredentials(
        username=security["sasl_plain_username"],
        password=security["sasl_plain_password"],
        ssl_context=security.get("ssl_context"),
        mechanism=security["sasl_mechanism"],
    )


async def _metrics_page(web: Any, request: Any) -> Any:
    body, content_type = metrics_body()
    return web.bytes(body, headers={"Content-Type": content_type})


async def _health_page(web: Any, request: Any) -> Any:
    status, body = health_body(TELEMETRY)
    return web.bytes(body, content_type="application/json", status=status)


def _can_listen(host: str, port: int) -> bool:
    """Whether Faust's web server can bind host:port (a taken port would stop the worker:
    metrics are not worth that, so it is logged and the web server stays off)."""
    if not port:
        return False
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            log.warning("metrics endpoint %s:%d not started: %s", host, port, exc)
            return False
    return True
