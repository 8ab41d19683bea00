"""`fleetpulse sink`: the aggregate topics into the metric tables, in batches.

Lifecycle: `run()` consumes `metrics.agg.5s.v1`, `.1h.v1` and `.1d.v1` in one consumer group
and collects rows until `batch_rows`, `batch_age_ms`, or until it has read all there is (waiting
longer would only add delay); `flush()` writes them in one transaction and only then commits
the Kafka offsets. While the database is down the sink pauses its partitions, retries with
capped exponential backoff (polling Kafka so the group keeps it), and resumes. A message that
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
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from runtime.errors import Disposition, describe, postgres_disposition
from schemas import DeadLetter, DeadLetterReason, WindowAggregate
from schemas.messages import describe_validation_error
from sinks.maintenance import maintain
from sinks.rows import TABLES, TableSpec, to_row
from sinks.settings import SinkSettings
from sinks.writer import BatchWriter, Item, write_isolating

log = logging.getLogger(__name__)

ROWS_WRITTEN = Counter("fleetpulse_sink_rows_written", "Rows upserted.", ["table"])
RECEIVED = Counter("fleetpulse_sink_received", "Aggregate messages consumed.")
DEAD_LETTERS = Counter("fleetpulse_sink_dropped", "Messages sent to the DLQ.", ["reason"])
ERRORS = Counter("fleetpulse_sink_errors", "Transient database errors (batch retried).")
LAG = Gauge("fleetpulse_sink_lag", "Messages behind the end of the assigned partitions.")

COMPONENT = "sink"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a row came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


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


class Sink:
    def __init__(
        self,
        settings: SinkSettings,
        *,
        topics: tuple[str, ...] | None = None,
        dlq_topic: str | None = None,
        tables: dict[str, TableSpec] | None = None,
    ) -> None:
        """Topics, dead-letter topic and the table of each topic default to the settings'."""
        self.settings = settings
        self.topics = topics or tuple(settings.agg_topics.values())
        self.dlq_topic = dlq_topic or settings.dlq_topic
        self.tables = tables or {t: TABLES[r] for r, t in settings.agg_topics.items()}
        self.writer = BatchWriter(settings.write_method)
        self.rows_written = 0
        self.dead_letters = 0
        self._items: dict[str, list[Item[Source]]] = {}
        self._pending = 0
        self._offsets: dict[TopicPartition, int] = {}  # to commit after the next write
        self._positions: dict[TopicPartition, int] = {}  # next offset read, for the lag
        self._first_at: float | None = None
        self._conn: asyncpg.Connection | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._dlq: AIOKafkaProducer | None = None
        self._stop = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._next_maintenance = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self._dlq = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            client_id=f"{s.kafka_client_id}-sink-dlq",
            acks="all",
            enable_idempotence=True,
        )
        await self._dlq.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            client_id=f"{s.kafka_client_id}-sink",
            group_id=s.sink_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.batch_rows,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        self._consumer.subscribe(list(self.topics), listener=_FlushOnRevoke(self))
        await self._consumer.start()
        self._conn = await self._connect()

    def stop(self) -> None:
        """Ask `run()` to finish: it flushes what it holds and returns."""
        self._stop.set()

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        if self._dlq is not None:
            with contextlib.suppress(Exception):
                await self._dlq.stop()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 5)

    async def run(self) -> None:
        """Consume, batch and write until `stop()`."""
        assert self._consumer is not None
        s = self.settings
        age = s.batch_age_ms / 1000
        log.info("sink consuming %s as group %s", ", ".join(self.topics), s.sink_group)
        while not self._stop.is_set():
            wait = (
                age if self._first_at is None else max(0.0, self._first_at + age - time.monotonic())
            )
            batch = await self._consumer.getmany(  # a second at most: stop() is seen soon
                timeout_ms=int(min(wait, 1.0) * 1000),
                max_records=max(1, s.batch_rows - self._pending),
            )
            for tp, records in batch.items():
                for record in records:
                    await self._take(tp, record)
            due = self._first_at is not None and time.monotonic() - self._first_at >= age
            lag = self._update_lag()
            # Caught up (nothing more fetched or known to the broker): no reason to wait.
            if self._pending >= s.batch_rows or due or (self._first_at is not None and lag == 0):
                await self.flush()
            await self._maybe_maintain()
        await self.flush()

    # -- consuming ---------------------------------------------------------------------------
    async def _take(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        RECEIVED.inc()
        self._offsets[tp] = self._positions[tp] = record.offset + 1
        if self._first_at is None:
            self._first_at = time.monotonic()
        source = Source(record.topic, record.partition, record.offset, record.key, record.value)
        try:
            agg = WindowAggregate.model_validate_json(record.value)
        except ValidationError as exc:
            reason = (
                DeadLetterReason.INVALID_JSON
                if any(e["type"] == "json_invalid" for e in exc.errors())
                else DeadLetterReason.VALIDATION
            )
            await self._dead_letter(source, reason, describe_validation_error(exc))
            return
        table = self.tables[record.topic]
        self._items.setdefault(table.name, []).append(Item(to_row(agg), source))
        self._pending += 1

    # -- writing -----------------------------------------------------------------------------
    @property
    def flushing(self) -> bool:
        return self._flush_lock.locked()

    async def flush(self) -> None:
        """Write what is held in one transaction, dead-letter rejected rows, commit offsets."""
        async with self._flush_lock:
            if not self._offsets:
                return
            rejected = await self._write_with_retry()
            for item, exc in rejected:
                await self._dead_letter(item.source, DeadLetterReason.DB_REJECTED, describe(exc))
            assert self._consumer is not None
            try:
                await self._consumer.commit(dict(self._offsets))
            except (CommitFailedError, IllegalStateError) as exc:
                # The group rebalanced meanwhile: the rows are written, and the partitions' new
                # owner replays from the last commit; upserts make the replay harmless.
                log.warning(
                    "offsets not committed after a rebalance (%s); the new owner replays", exc
                )
            self._items.clear()
            self._offsets.clear()
            self._pending = 0
            self._first_at = None

    async def _write_with_retry(self) -> list[tuple[Item[Source], BaseException]]:
        backoff = self.settings.retry_min
        paused = False
        assert self._consumer is not None
        try:
            while True:
                try:
                    if self._conn is None or self._conn.is_closed():
                        self._conn = await self._connect_once()
                    return await self._write_once(self._conn)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    if postgres_disposition(exc) is Disposition.PERMANENT:
                        raise
                    ERRORS.inc()
                    log.warning(
                        "database unavailable (%s); %d rows held, retrying in %.1f s",
                        describe(exc),
                        self._pending,
                        backoff,
                    )
                    await self._drop_connection()
                    if not paused:
                        # Stop fetching: memory stays at the batch in hand.
                        self._consumer.pause(*self._consumer.assignment())
                        paused = True
                    # Polling the paused consumer waits like a sleep and keeps the group
                    # membership alive (max.poll.interval).
                    await self._consumer.getmany(timeout_ms=int(backoff * 1000))
                    backoff = min(backoff * 2, self.settings.retry_max)
        finally:
            if paused:
                self._consumer.resume(*self._consumer.assignment())
                log.info("database back; resuming")

    async def _write_once(
        self, conn: asyncpg.Connection
    ) -> list[tuple[Item[Source], BaseException]]:
        rejected: list[tuple[Item[Source], BaseException]] = []
        by_name = {t.name: t for t in self.tables.values()}
        async with conn.transaction():
            for name, items in self._items.items():
                rejected += await write_isolating(self.writer, conn, by_name[name], items)
        for name, items in self._items.items():
            n = len(items) - sum(1 for i, _ in rejected if i in items)
            ROWS_WRITTEN.labels(table=name).inc(n)
            self.rows_written += n
        return rejected

    async def _dead_letter(self, source: Source, reason: DeadLetterReason, error: str) -> None:
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
        DEAD_LETTERS.labels(reason=reason.value).inc()
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            source.topic,
            source.partition,
            source.offset,
            reason.value,
            error[:300],
        )

    # -- database connection -----------------------------------------------------------------
    async def _connect_once(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(**self.settings.connect_kwargs())
        return conn

    async def _connect(self) -> asyncpg.Connection:
        backoff = self.settings.retry_min
        while True:
            try:
                return await self._connect_once()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("cannot connect to %s (%s); retrying", self.settings.describe(), exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_max)

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

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
        LAG.set(total)
        return total

    async def _maybe_maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_maintenance or self._conn is None:
            return
        self._next_maintenance = now + self.settings.maintain_every
        try:
            report = await maintain(self._conn, self.settings)
            log.info("maintenance: %s", report.summary())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning(
                "maintenance failed (%s); next try in %.0f s",
                describe(exc),
                self.settings.maintain_every,
            )


async def run_sink(settings: SinkSettings) -> None:
    """Run a sink until SIGTERM or SIGINT."""
    import signal

    from runtime.telemetry import serve_metrics

    serve_metrics(settings.metrics_host, settings.metrics_port)
    sink = Sink(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sink.stop)
    await sink.start()
    try:
        await sink.run()
    finally:
        await sink.close()
        log.info(
            "sink stopped: %d rows written, %d dead letters", sink.rows_written, sink.dead_letters
        )
