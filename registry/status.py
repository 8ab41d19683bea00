"""Keeps `servers.is_online` and `last_seen_at` current from `metrics.status.v1`, and every
change in `server_status_history` (the read path's `offline` gaps).

Lifecycle: `start()` joins the registry's consumer group, `run()` applies status changes and
commits offsets only after the database has them, `stop()` ends `run()` within its timeout.
A change older than the one already applied (replay, out of order) is ignored; an unknown
server is ignored; an invalid message is logged, counted and skipped. While Kafka or the
database is unavailable it retries with capped backoff and never takes the API down; a batch
the database could not take for a transient reason is read again, not skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from registry.settings import RegistrySettings
from registry.store import Conn, Connection
from runtime import kafka, postgres
from runtime.backoff import Backoff
from runtime.errors import Disposition
from runtime.postgres import POSTGRES_ERRORS
from runtime.postgres import probe as postgres_probe
from runtime.telemetry import telemetry
from schemas.messages import InvalidMessage, ServerState, ServerStatusChange, decode_message

log = logging.getLogger(__name__)

TELEMETRY = telemetry("registry")
TELEMETRY.declare(
    outputs=["servers"],
    reasons=["invalid_json", "validation", "unknown_or_stale"],
    kinds=["kafka", "postgres"],
)
_SENT = TELEMETRY.sent.labels(output="servers")

_APPLY = """
    UPDATE servers SET
        is_online = $2,
        status_changed_at = $3,
        last_seen_at = greatest(last_seen_at, $4)
    WHERE id = $1 AND (status_changed_at IS NULL OR status_changed_at < $3)
"""


# Every change, kept for the read path's gaps (`offline`); a replayed one is there already.
_HISTORY = """
    INSERT INTO server_status_history (server_id, changed_at, event_at, online)
    SELECT $1::varchar, $2::timestamptz, $3::timestamptz, $4::boolean
    WHERE EXISTS (SELECT 1 FROM servers WHERE id = $1::varchar)
    ON CONFLICT DO NOTHING
"""


async def apply_status(conn: Conn, change: ServerStatusChange) -> bool:
    """Apply one change and keep it in the history; False when the server is unknown or the
    change is not newer than the one applied (an older one still joins the history)."""
    online = change.status is ServerState.ONLINE
    await conn.execute(_HISTORY, change.server_id, change.changed_at, change.last_event_at, online)
    result: str = await conn.execute(
        _APPLY,
        change.server_id,
        online,
        change.changed_at,
        change.last_event_at,
    )
    return result != "UPDATE 0"


class StatusConsumer:
    def __init__(self, settings: RegistrySettings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.applied = 0
        self.skipped = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._positions: dict[TopicPartition, int] = {}  # next offset to read, for the lag
        self._stop = asyncio.Event()
        self._kafka = TELEMETRY.outage("kafka", log)
        self._database = TELEMETRY.outage("postgres", log)
        self._backoff = Backoff(
            settings.retry_min, settings.retry_max, probe_every=settings.retry_probe_every
        )

    async def start(self) -> None:
        s = self.settings
        self._consumer = kafka.consumer(s, "registry", s.status_topic, group=s.registry_group)
        await self._consumer.start()

    def stop(self) -> None:
        """Ask `run()` to return after the batch in hand."""
        self._stop.set()

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None

    async def run(self) -> None:
        """Start (retrying while Kafka is away), then consume until `stop()`."""
        kafka_ready = kafka.broker_probe(self.settings)
        database_ready = postgres_probe(self.settings)
        while not self._stop.is_set():
            try:
                if self._consumer is None:
                    await self.start()
                    log.info(
                        "consuming %s as group %s",
                        self.settings.status_topic,
                        self.settings.registry_group,
                    )
                await self._poll()
            except KafkaError as exc:  # fetching or committing
                await self._kafka_failed(exc)
                await self._backoff.wait(kafka_ready if kafka.is_away(exc) else None, self._stop)
            except POSTGRES_ERRORS as exc:  # applying (the consumer is up, or start failed)
                if self._consumer is None:
                    await self._kafka_failed(exc)
                    await self._backoff.wait(kafka_ready, self._stop)
                    continue
                TELEMETRY.errors.labels(kind="postgres").inc()
                self._database.failed(exc)
                await self._backoff.wait(
                    database_ready if postgres.is_away(exc) else None, self._stop
                )
            else:
                self._kafka.ok()
                self._backoff.reset()
        await self.close()

    async def _kafka_failed(self, exc: BaseException) -> None:
        TELEMETRY.errors.labels(kind="kafka").inc()
        self._kafka.failed(exc)
        if self._consumer is not None:
            await self.close()

    async def _poll(self) -> None:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=500, max_records=500)
        if batch:
            with TELEMETRY.batch_seconds.time():
                try:
                    async with self.pool.acquire() as conn:
                        for tp, records in batch.items():
                            for record in records:
                                await self._take(conn, record)
                            self._positions[tp] = records[-1].offset + 1
                except POSTGRES_ERRORS as exc:
                    if postgres.disposition(exc) is Disposition.TRANSIENT:
                        self._rewind(batch)
                    raise
                self._database.ok()
                # Only after the database has every change of the batch.
                await self._consumer.commit()
        lag = 0
        for tp in self._consumer.assignment():
            high, position = self._consumer.highwater(tp), self._positions.get(tp)
            if high is not None and position is not None:
                lag += max(0, high - position)
        TELEMETRY.lag.set(lag)

    def _rewind(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Fetch `batch` again at the next poll: the database did not take all of it. (The
        consumer's position is past it already; the next commit would skip it for good.)
        Changes of it already applied are ignored the second time, as not newer."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        for tp, records in batch.items():
            if tp in assigned:
                self._consumer.seek(tp, records[0].offset)

    async def _take(self, conn: Connection, record: ConsumerRecord) -> None:
        TELEMETRY.received.inc()
        try:
            change = decode_message(ServerStatusChange, record.value)
        except InvalidMessage as exc:
            self.skipped += 1
            TELEMETRY.dropped.labels(reason=exc.reason.value).inc()
            log.warning(
                "skipped invalid status message %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                exc.detail[:300],
            )
            return
        if await apply_status(conn, change):
            self.applied += 1
            _SENT.inc()
        else:
            self.skipped += 1
            TELEMETRY.dropped.labels(reason="unknown_or_stale").inc()
