"""`fleetpulse sink`: the aggregate topics into the metric tables, in batches.

Lifecycle: `run()` consumes `metrics.agg.5s.v1`, `.1h.v1` and `.1d.v1` in one consumer group
(and `metrics.dlq.v1`, whose `late` letters from the stream become `late_samples` rows) and
collects rows until `batch_rows`, `batch_age_ms`, or until it has read all there is (waiting
longer would only add delay); then it writes them, one transaction per connection
(`write_connections`, a partition always on the same one), and only once every connection has
committed commits the Kafka offsets. The write runs in the background while the next batch is
read and decoded (one write at a time, offsets committed in order; at most two batches in
memory). While the
database is down the sink pauses its partitions, retries with capped exponential backoff
(polling Kafka so the group keeps it), and resumes. A message that
is not a valid aggregate, or a row the database rejects, goes alone to `metrics.dlq.v1` with
the reason; the rest lands. `stop()` finishes the batch in hand (bounded) and leaves the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import Counter

from runtime import kafka, postgres
from runtime.backoff import Backoff
from runtime.errors import Disposition, describe
from runtime.postgres import POSTGRES_ERRORS
from runtime.service import Service
from runtime.telemetry import telemetry
from schemas import (
    DeadLetter,
    DeadLetterReason,
    InvalidMessage,
    decode_raw_event,
    decode_window_aggregate,
)
from schemas.messages import decode_message
from sinks.maintenance import maintain
from sinks.rows import LATE_SAMPLES, TABLES, TableSpec, to_row
from sinks.settings import SinkSettings
from sinks.writer import BatchWriter, Item, write_isolating

log = logging.getLogger(__name__)

COMPONENT = "sink"
TELEMETRY = telemetry(COMPONENT)
#: Records decoded between two turns of the write in the background.
_SLICE = 500
WRITE_WAIT = Counter(
    "fleetpulse_sink_write_wait_seconds",
    "Seconds the sink held its next batch, read and decoded, waiting for the database to "
    "finish the write before it (growing by about a second a second: the database is the "
    "limit).",
)
_RETRIED: tuple[type[BaseException], ...] = (*POSTGRES_ERRORS, postgres.DatabaseUnavailable)


@dataclass(frozen=True, slots=True)
class _Batch:
    """Rows read and not yet written, by table, and the offsets to commit after them."""

    items: dict[str, list[Item[ConsumerRecord]]]
    offsets: dict[TopicPartition, int]
    pending: int


class _FlushOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Write and commit what we hold before another worker takes these partitions over.
        # During a flush (a rebalance while waiting out a database outage) the flush in hand
        # finishes the job; waiting for it here would deadlock.
        if not self.sink.flushing:
            await self.sink.flush()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        return None


class Sink(Service):
    name = COMPONENT

    def __init__(
        self,
        settings: SinkSettings,
        *,
        topics: tuple[str, ...] | None = None,
        dlq_topic: str | None = None,
        tables: dict[str, TableSpec] | None = None,
    ) -> None:
        """Topics, dead-letter topic and the table of each topic default to the settings'."""
        super().__init__()
        self.settings = settings
        self.dlq_topic = dlq_topic or settings.dlq_topic
        # The dead-letter topic too: its late samples are counted per window (`late_samples`).
        self.topics = (*(topics or tuple(settings.agg_topics.values())), self.dlq_topic)
        self.tables = tables or {t: TABLES[r] for r, t in settings.agg_topics.items()}
        self._by_name = {t.name: t for t in (*self.tables.values(), LATE_SAMPLES)}
        self.writer = BatchWriter(settings.write_method)
        self.rows_written = 0
        self.dead_letters = 0
        #: Seconds spent writing batches, and those the reader waited for a write to end.
        self.write_time = 0.0
        self.write_wait = 0.0
        self._items: dict[str, list[Item[ConsumerRecord]]] = {}
        self._pending = 0
        self._offsets: dict[TopicPartition, int] = {}  # to commit after the next write
        self._positions: dict[TopicPartition, int] = {}  # next offset read, for the lag
        self._first_at: float | None = None
        #: One per write lane; lane i writes the partitions p with p % lanes == i.
        self._conns: list[asyncpg.Connection | None] = [None] * settings.write_connections
        self._consumer: AIOKafkaConsumer | None = None
        self._dlq: AIOKafkaProducer | None = None
        self._flush_lock = asyncio.Lock()
        #: The batch being written in the background (`_hand_off`), if any.
        self._writing: asyncio.Task[None] | None = None
        self._next_maintenance = 0.0
        self._database = TELEMETRY.outage("postgres", log)
        self._backoff = Backoff(
            settings.retry_min, settings.retry_max, probe_every=settings.retry_probe_every
        )
        TELEMETRY.declare(
            outputs=list(self._by_name),
            reasons=[*(r.value for r in DeadLetterReason), "unreadable_dead_letter"],
            kinds=["postgres"],
        )
        self._errors = TELEMETRY.errors.labels(kind="postgres")
        self._sent = {name: TELEMETRY.sent.labels(output=name) for name in self._by_name}

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self._dlq = kafka.producer(s, "sink-dlq")
        await self._dlq.start()
        self._consumer = kafka.consumer(
            s,
            "sink",
            *self.topics,
            group=s.sink_group,
            max_poll_records=s.batch_rows,
            listener=_FlushOnRevoke(self),
        )
        await self._consumer.start()
        self._conns[0] = await postgres.connect_retrying(
            s, self._backoff, self._database, self.stopping
        )

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        if self._dlq is not None:
            with contextlib.suppress(Exception):
                await self._dlq.stop()
        for conn in self._conns:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)
        log.info(
            "sink closed: %d rows written, %d dead letters; %.1f s writing batches, the "
            "reader waiting %.1f s of it for a write to end",
            self.rows_written,
            self.dead_letters,
            self.write_time,
            self.write_wait,
        )

    async def run(self) -> None:
        """Consume, batch and write until `stop()`, then flush what is held."""
        assert self._consumer is not None
        s = self.settings
        age = s.batch_age_ms / 1000
        log.info("sink consuming %s as group %s", ", ".join(self.topics), s.sink_group)
        while not self.stopping.is_set():
            wait = (
                age if self._first_at is None else max(0.0, self._first_at + age - time.monotonic())
            )
            batch = await self._consumer.getmany(  # a second at most: stop() is seen soon
                timeout_ms=int(min(wait, 1.0) * 1000),
                max_records=max(1, min(_SLICE, s.batch_rows - self._pending)),
            )
            for tp, records in batch.items():
                for record in records:
                    await self._take(tp, record)
            # Buffered records come back without a pause: yield, so the write in the
            # background takes its next step while this loop decodes.
            await asyncio.sleep(0)
            due = self._first_at is not None and time.monotonic() - self._first_at >= age
            lag = self._update_lag()
            # Caught up (nothing more fetched or known to the broker): no reason to wait.
            if self._pending >= s.batch_rows or due or (self._first_at is not None and lag == 0):
                await self._hand_off()
            await self._maybe_maintain()
        await self.flush()

    async def _hand_off(self) -> None:
        """Write the batch in hand in the background, once the previous write is done; while
        it is not (a slow or absent database), stop fetching and keep the group's membership."""
        consumer = self._consumer
        assert consumer is not None
        writing = self._writing
        if writing is not None:
            waited_from = time.monotonic()
            paused = False
            try:
                while True:
                    done, _ = await asyncio.wait({writing}, timeout=1.0)
                    if done:
                        break
                    if not paused:
                        # Memory stays at the two batches: the one written, the one in hand.
                        consumer.pause(*consumer.assignment())
                        paused = True
                    await consumer.getmany(timeout_ms=0)  # keeps max.poll.interval
            finally:
                if paused:
                    consumer.resume(*consumer.assignment())
            if self._writing is writing:  # (else a rebalance's flush took it over)
                self._writing = None
            writing.result()  # a permanent failure ends the sink, as an inline write did
            waited = time.monotonic() - waited_from
            self.write_wait += waited
            WRITE_WAIT.inc(waited)
        if self._offsets:
            # Taken now, not when the task first runs: the loop reads on until it yields, and
            # what it reads from here on belongs to the next batch.
            self._writing = asyncio.create_task(self._write(self._detach(), background=True))

    # -- consuming ---------------------------------------------------------------------------
    async def _take(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        self._offsets[tp] = self._positions[tp] = record.offset + 1
        if self._first_at is None:
            self._first_at = time.monotonic()
        if record.topic == self.dlq_topic:
            # Not counted as received: `received` and `dropped` are the aggregates' (the
            # dead-letter ratio the alerts watch).
            self._take_letter(record)
            return
        TELEMETRY.received.inc()
        try:
            agg = decode_window_aggregate(record.value)
        except InvalidMessage as exc:
            await self._dead_letter(record, exc.reason, exc.detail)
            return
        table = self.tables[record.topic]
        self._items.setdefault(table.name, []).append(Item(to_row(agg), record))
        self._pending += 1

    def _take_letter(self, record: ConsumerRecord) -> None:
        """A dead letter: a raw sample the stream worker refused as late becomes a row of
        `late_samples`; every other letter is only read past (its offset is committed with the
        next batch). A letter that cannot be read is logged and counted, never dead-lettered
        again (the sink reads that topic)."""
        try:
            letter = decode_message(DeadLetter, record.value)
            if letter.reason is not DeadLetterReason.LATE or letter.component != "stream":
                return
            sample = decode_raw_event(letter.payload())
        except (InvalidMessage, ValueError) as exc:
            TELEMETRY.dropped.labels(reason="unreadable_dead_letter").inc()
            log.warning(
                "unreadable dead letter %s[%d]@%d skipped: %s",
                record.topic,
                record.partition,
                record.offset,
                str(exc)[:300],
            )
            return
        if letter.source_partition is None or letter.source_offset is None:
            return
        row = (letter.source_partition, letter.source_offset, sample.server_id, sample.timestamp)
        self._items.setdefault(LATE_SAMPLES.name, []).append(Item(row, record))
        self._pending += 1

    # -- writing -----------------------------------------------------------------------------
    @property
    def flushing(self) -> bool:
        return self._flush_lock.locked()

    async def flush(self) -> None:
        """Write what is held in one transaction, dead-letter rejected rows, commit offsets
        (a stop, a rebalance): first waits for the write in the background, if any."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            await writing
        await self._write(self._detach(), background=False)

    def _detach(self) -> _Batch:
        """The batch in hand, leaving an empty one for what is read next."""
        batch = _Batch(self._items, self._offsets, self._pending)
        self._items, self._offsets, self._pending = {}, {}, 0
        self._first_at = None
        return batch

    async def _write(self, batch: _Batch, background: bool) -> None:
        """Write `batch`, dead-letter its rejected rows, commit its offsets. In the
        `background`, `run()` keeps the group's membership meanwhile; else this does."""
        if not batch.offsets:
            return
        async with self._flush_lock:
            started = time.monotonic()
            with TELEMETRY.batch_seconds.time():
                rejected = await self._write_with_retry(
                    batch.items, batch.pending, poll=not background
                )
            self.write_time += time.monotonic() - started
            for item, exc in rejected:
                await self._dead_letter(item.source, DeadLetterReason.DB_REJECTED, describe(exc))
            assert self._consumer is not None
            try:
                await self._consumer.commit(batch.offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group rebalanced meanwhile: the rows are written, and the partitions' new
                # owner replays from the last commit; upserts make the replay harmless.
                log.warning(
                    "offsets not committed after a rebalance (%s); the new owner replays", exc
                )

    async def _write_with_retry(
        self, items: dict[str, list[Item[ConsumerRecord]]], pending: int, poll: bool
    ) -> list[tuple[Item[ConsumerRecord], BaseException]]:
        """Write `items` until the database takes them. `poll`: pause the consumer and poll
        it meanwhile (else `run()` does, in `_hand_off`)."""
        paused = False
        consumer = self._consumer
        assert consumer is not None
        ready = postgres.probe(self.settings)

        async def keep_membership() -> bool:
            # Polling the paused consumer keeps the group membership (max.poll.interval).
            if poll:
                await consumer.getmany(timeout_ms=0)
            return False

        async def probe() -> bool:
            await keep_membership()
            return await ready()

        try:
            while True:
                try:
                    rejected = await self._write_once(items)
                    self._database.ok()
                    self._backoff.reset()
                    return rejected
                except _RETRIED as exc:
                    if postgres.disposition(exc) is Disposition.PERMANENT:
                        raise
                    self._errors.inc()
                    self._database.failed(exc, detail=f"{pending} rows held")
                    await self._drop_connection()
                    if poll and not paused:
                        # Stop fetching: memory stays at the batch in hand.
                        consumer.pause(*consumer.assignment())
                        paused = True
                    # Probed only when the database is away: a transient refusal from a
                    # running one (disk full, too many connections) waits the full delay.
                    if postgres.is_away(exc):
                        await self._backoff.wait(probe)
                    else:
                        await self._backoff.wait(keep_membership)
        finally:
            if paused:
                consumer.resume(*consumer.assignment())

    async def _write_once(
        self, batch: dict[str, list[Item[ConsumerRecord]]]
    ) -> list[tuple[Item[ConsumerRecord], BaseException]]:
        """Write `batch` over the lanes' connections at once, each lane in one transaction.
        A lane that fails leaves the others committed: the retry writes the batch again, and
        upserting a row twice leaves it as once."""
        lanes = len(self._conns)
        parts: list[dict[str, list[Item[ConsumerRecord]]]] = [{} for _ in range(lanes)]
        for name, items in batch.items():
            if lanes == 1:
                parts[0][name] = items
                continue
            for item in items:
                parts[item.source.partition % lanes].setdefault(name, []).append(item)
        results = await asyncio.gather(
            *(self._write_lane(i, part) for i, part in enumerate(parts) if part),
            return_exceptions=True,
        )
        rejected: list[tuple[Item[ConsumerRecord], BaseException]] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            rejected += result
        for name, items in batch.items():
            n = len(items) - sum(1 for i, _ in rejected if i in items)
            self._sent[name].inc(n)
            self.rows_written += n
        return rejected

    async def _write_lane(
        self, lane: int, batch: dict[str, list[Item[ConsumerRecord]]]
    ) -> list[tuple[Item[ConsumerRecord], BaseException]]:
        conn = self._conns[lane]
        if conn is None or conn.is_closed():
            conn = self._conns[lane] = await postgres.connect(self.settings)
        rejected: list[tuple[Item[ConsumerRecord], BaseException]] = []
        by_name = self._by_name
        async with conn.transaction():
            for name, items in batch.items():
                rejected += await write_isolating(self.writer, conn, by_name[name], items)
        return rejected

    async def _dead_letter(
        self, source: ConsumerRecord, reason: DeadLetterReason, error: str
    ) -> None:
        assert self._dlq is not None
        letter = DeadLetter.for_payload(
            source.value,
            reason=reason,
            error=error,
            component=COMPONENT,
            source_topic=source.topic,
            source_partition=source.partition,
            source_offset=source.offset,
            key=source.key,
        )
        await self._dlq.send_and_wait(self.dlq_topic, letter.to_json_bytes(), key=source.key)
        self.dead_letters += 1
        TELEMETRY.dropped.labels(reason=reason.value).inc()
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            source.topic,
            source.partition,
            source.offset,
            reason.value,
            error[:300],
        )

    # -- database connection -----------------------------------------------------------------
    async def _drop_connection(self) -> None:
        for i, conn in enumerate(self._conns):
            if conn is not None:
                conn.terminate()
                self._conns[i] = None

    # -- upkeep ------------------------------------------------------------------------------
    def _update_lag(self) -> int:
        """Messages between what this sink has read and the end of its partitions, as of the
        last fetch (partitions it has read nothing from since joining count as caught up)."""
        assert self._consumer is not None
        total = 0
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            position = self._positions.get(tp)
            if high is not None and position is not None:
                total += max(0, high - position)
        TELEMETRY.lag.set(total)
        return total

    async def _maybe_maintain(self) -> None:
        now = time.monotonic()
        conn = self._conns[0]
        if now < self._next_maintenance or conn is None:
            return
        if self._writing is not None and not self._writing.done():
            return  # the connection is the write's; the next pass does it
        self._next_maintenance = now + self.settings.maintain_every
        try:
            report = await maintain(conn, self.settings)
            log.info("maintenance: %s", report.summary())
        except POSTGRES_ERRORS as exc:
            log.warning(
                "maintenance failed (%s); next try in %.0f s",
                describe(exc),
                self.settings.maintain_every,
            )
