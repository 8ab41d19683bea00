"""Keeps `servers.is_online` and `last_seen_at` current from `metrics.status.v1`.

Lifecycle: `start()` joins the registry's consumer group, `run()` applies status changes and
commits offsets only after the database has them, `stop()` ends `run()` within its timeout.
A change older than the one already applied (replay, out of order) is ignored; an unknown
server is ignored; an invalid message is logged, counted and skipped. While Kafka or the
database is unavailable it retries with capped backoff and never takes the API down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from registry.settings import RegistrySettings
from registry.store import Conn, Connection
from schemas.messages import ServerState, ServerStatusChange, describe_validation_error

log = logging.getLogger(__name__)

RECEIVED = Counter("fleetpulse_registry_received", "Status messages consumed.")
SENT = Counter("fleetpulse_registry_sent", "Status changes applied to servers.")
DROPPED = Counter(
    "fleetpulse_registry_dropped", "Status messages skipped.", ["reason"]
)  # invalid, unknown_or_stale
ERRORS = Counter("fleetpulse_registry_errors", "Kafka or database errors (retried).")
LAG = Gauge("fleetpulse_registry_lag", "Status messages behind the end of the assigned partitions.")

_APPLY = """
    UPDATE servers SET
        is_online = $2,
        status_changed_at = $3,
        last_seen_at = greatest(last_seen_at, $4)
    WHERE id = $1 AND (status_changed_at IS NULL OR status_changed_at < $3)
"""


async def apply_status(conn: Conn, change: ServerStatusChange) -> bool:
    """Apply one change; False when the server is unknown or the change is not newer."""
    result: str = await conn.execute(
        _APPLY,
        change.server_id,
        change.status is ServerState.ONLINE,
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

    async def start(self) -> None:
        s = self.settings
        self._consumer = AIOKafkaConsumer(
            s.status_topic,
            bootstrap_servers=s.kafka_bootstrap,
            client_id=f"{s.kafka_client_id}-registry",
            group_id=s.registry_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
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
        backoff = self.settings.retry_min
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
                backoff = self.settings.retry_min
            except (KafkaError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                ERRORS.inc()
                log.warning("status consumer: %s; retrying in %.1f s", type(exc).__name__, backoff)
                if isinstance(exc, KafkaError) and self._consumer is not None:
                    await self.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, self.settings.retry_max)
        await self.close()

    async def _poll(self) -> None:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=500, max_records=500)
        if batch:
            async with self.pool.acquire() as conn:
                for tp, records in batch.items():
                    for record in records:
                        await self._take(conn, record)
                    self._positions[tp] = records[-1].offset + 1
            # Only after the database has every change of the batch.
            await self._consumer.commit()
        lag = 0
        for tp in self._consumer.assignment():
            high, position = self._consumer.highwater(tp), self._positions.get(tp)
            if high is not None and position is not None:
                lag += max(0, high - position)
        LAG.set(lag)

    async def _take(self, conn: Connection, record: ConsumerRecord) -> None:
        RECEIVED.inc()
        try:
            change = ServerStatusChange.model_validate_json(record.value or b"")
        except ValidationError as exc:
            self.skipped += 1
            DROPPED.labels(reason="invalid").inc()
            log.warning(
                "skipped invalid status message %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                describe_validation_error(exc)[:300],
            )
            return
        if await apply_status(conn, change):
            self.applied += 1
            SENT.inc()
        else:
            self.skipped += 1
            DROPPED.labels(reason="unknown_or_stale").inc()
