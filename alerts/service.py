"""`fleetpulse alerts`: judges the rules on closed windows and status changes, and publishes,
stores and delivers what fires and resolves.

- **Input.** The aggregate topics and `metrics.status.v1`, read as a downstream consumer: every
  partition is assigned to the one active evaluator, which keeps its own position in
  PostgreSQL (`alert_offsets`) and commits it to its Kafka group too (for the lag report). A
  new evaluator starts at the end of the aggregate topics (alerts are about the present) and
  at the start of the compacted status topic (which servers are offline).
- **One active evaluator.** It holds a PostgreSQL advisory lock; a second one stands by until
  the first one's session ends (a stop, a kill -9, a lost connection), then takes over from
  the stored state and position.
- **Crash safety.** The changed states, the new events and the position go into PostgreSQL in
  one transaction per batch (`alerts.store.save`). After a crash, the evaluator reloads the
  state and resumes at the stored position: the windows after it are judged again from the
  state they were first judged from, so the same events come out, with the same ids, which
  the history already holds (nothing new is written, nothing is sent twice).
- **Outputs.** Each event is an outbox row: the delivery task sends it to the topic, to
  Alertmanager and to the webhook (those configured), and notes each one done. A restart sends
  what was not noted yet; Alertmanager identifies alerts by their labels, so one received
  twice notifies nobody twice.
- **Invalid input** (a message that is not a WindowAggregate or ServerStatusChange) is
  logged, counted and skipped: nothing is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from alerts import store
from alerts.delivery import (
    Alertmanager,
    DeliveryError,
    Webhook,
    alertmanager_alert,
    parse,
    resend_until,
    still_firing,
)
from alerts.engine import Engine
from alerts.settings import AlertsSettings
from runtime import kafka, postgres
from runtime.backoff import Backoff
from runtime.errors import describe
from runtime.postgres import POSTGRES_ERRORS
from runtime.service import Service
from runtime.telemetry import telemetry
from schemas.messages import (
    InvalidMessage,
    ServerStatusChange,
    decode_message,
    decode_window_aggregate,
)

log = logging.getLogger(__name__)

TELEMETRY = telemetry("alerts")
TELEMETRY.declare(
    outputs=["topic", "alertmanager", "webhook", "events"],
    reasons=["invalid_json", "validation"],
    kinds=["kafka", "postgres", "alertmanager", "webhook"],
)
#: The advisory lock the active evaluator holds ("fleetpulse.alerts" → a fixed 63-bit number).
LOCK_KEY = int.from_bytes(hashlib.sha256(b"fleetpulse.alerts").digest()[:8], "big") >> 1
_POLL_MS = 200
_MAX_RECORDS = 5000


class AlertEvaluator(Service):
    name = "alerts"

    def __init__(self, settings: AlertsSettings) -> None:
        super().__init__()
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.engine = Engine(absence_grace=settings.alerts_absence_grace)
        self.windows = 0  # judged, since the start
        self._lock: asyncpg.Connection | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._alertmanager: Alertmanager | None = None
        self._webhook: Webhook | None = None
        self._wake = asyncio.Event()
        self._topics = [*settings.agg_topics.values(), settings.status_topic]
        self._kafka = TELEMETRY.outage("kafka", log)
        self._database = TELEMETRY.outage("postgres", log)
        self._backoff = Backoff(
            settings.retry_min, settings.retry_max, probe_every=settings.retry_probe_every
        )
        self._rules_at = 0.0
        self._tick_at = 0.0
        self._resend_at = 0.0
        self.leading = asyncio.Event()  # set once this evaluator holds the lock
        self.ready = asyncio.Event()  # set once it has resumed at its position

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.pool = await postgres.create_pool(s, min_size=1, max_size=3)
        url = self._alertmanager_url()
        if url is not None:
            self._alertmanager = Alertmanager(url, timeout=s.alerts_delivery_timeout)
            log.info("delivering to Alertmanager at %s", url)
        if s.alerts_webhook_url is not None:
            token = s.alerts_webhook_token
            self._webhook = Webhook(
                str(s.alerts_webhook_url),
                token=token.get_secret_value() if token else None,
                timeout=s.alerts_delivery_timeout,
            )
            log.info("delivering to the webhook at %s", _without_query(str(s.alerts_webhook_url)))

    def _alertmanager_url(self) -> str | None:
        s = self.settings
        if s.alertmanager_url is not None:
            return str(s.alertmanager_url)
        if (s.home_dir / "alertmanager" / "alertmanager.pid").exists():
            return f"http://127.0.0.1:{s.alertmanager_port}"
        return None

    async def run(self) -> None:
        await self._lead()
        if self.stopping.is_set():
            return
        delivery = asyncio.create_task(self._deliver_forever(), name="alerts-delivery")
        try:
            while not self.stopping.is_set():
                try:
                    await self._resume()
                    while not self.stopping.is_set():
                        await self._step()
                        self._kafka.ok()
                        self._database.ok()
                        self._backoff.reset()
                except kafka.KAFKA_ERRORS as exc:
                    TELEMETRY.errors.labels(kind="kafka").inc()
                    self._kafka.failed(exc)
                    await self._drop_clients()
                    await self._backoff.wait(kafka.broker_probe(self.settings), self.stopping)
                except POSTGRES_ERRORS as exc:
                    TELEMETRY.errors.labels(kind="postgres").inc()
                    self._database.failed(exc)
                    await self._drop_clients()
                    await self._backoff.wait(postgres.probe(self.settings), self.stopping)
                    await self._lead()
        finally:
            self._wake.set()
            delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivery

    async def close(self) -> None:
        await self._drop_clients()
        for client in (self._alertmanager, self._webhook):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
        if self._lock is not None:
            with contextlib.suppress(Exception):
                await self._lock.close()
            self._lock = None
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await self.pool.close()

    async def _drop_clients(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self._consumer = self._producer = None

    async def _lead(self) -> None:
        """Hold the advisory lock (wait for it while another evaluator has it)."""
        if self._lock is not None and not self._lock.is_closed():
            with contextlib.suppress(*POSTGRES_ERRORS):
                if await self._lock.fetchval("SELECT 1") == 1:
                    return
        self.leading.clear()
        said = False
        while not self.stopping.is_set():
            try:
                if self._lock is None or self._lock.is_closed():
                    self._lock = await postgres.connect(self.settings)
                if await self._lock.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                    self._database.ok()
                    self.leading.set()
                    log.info("evaluating: this evaluator holds the lock")
                    return
                if not said:
                    log.info("another evaluator is active: standing by")
                    said = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 1.0)
            except (postgres.DatabaseUnavailable, *POSTGRES_ERRORS) as exc:  # type: ignore[misc]
                self._database.failed(exc)
                self._lock = None
                await self._backoff.wait(postgres.probe(self.settings), self.stopping)

    async def _resume(self) -> None:
        """Rebuild the state from PostgreSQL and seek to the stored position."""
        assert self.pool is not None
        s = self.settings
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn:
            rules = await store.load_rules(conn)
            states = await store.load_states(conn)
            offsets = await store.load_offsets(conn)
            servers = await conn.fetch("SELECT id, is_online, last_seen_at FROM servers")
            if self._alertmanager is None:
                await store.skip_outputs(conn, ["alertmanager_at"])
            if self._webhook is None:
                await store.skip_outputs(conn, ["webhook_at"])
        engine = Engine(rules, states, absence_grace=s.alerts_absence_grace)
        for row in servers:
            # Online per the registry: heard of now, until its windows say otherwise.
            seen = now if row["is_online"] else row["last_seen_at"]
            if seen is not None:
                engine.last_seen[row["id"]] = seen
            if not row["is_online"] and seen is not None:
                engine.offline.add(row["id"])
        engine.set_servers([r["id"] for r in servers], now)
        self.engine = engine
        self._rules_at = time.monotonic()

        self._producer = kafka.producer(s, "alerts")
        await self._producer.start()
        self._consumer = kafka.consumer(s, "alerts", group=s.alerts_group)
        await self._consumer.start()
        assigned = []
        for topic in self._topics:
            for p in sorted(await self._producer.partitions_for(topic)):
                assigned.append(TopicPartition(topic, p))
        self._consumer.assign(assigned)
        fresh_agg, fresh_status = [], []
        for tp in assigned:
            stored = offsets.get((tp.topic, tp.partition))
            if stored is not None:
                self._consumer.seek(tp, stored)
            elif tp.topic == s.status_topic:
                fresh_status.append(tp)
            else:
                fresh_agg.append(tp)
        if fresh_agg:
            await self._consumer.seek_to_end(*fresh_agg)
        if fresh_status:
            await self._consumer.seek_to_beginning(*fresh_status)
        log.info(
            "resumed: %d rules, %d pending or firing alerts, %d partitions (%d from a stored "
            "position)",
            len(rules),
            len(states),
            len(assigned),
            len(assigned) - len(fresh_agg) - len(fresh_status),
        )
        self._wake.set()
        self.ready.set()

    # -- one step --------------------------------------------------------------------------
    async def _step(self) -> None:
        assert self._consumer is not None and self.pool is not None
        batch = await self._consumer.getmany(timeout_ms=_POLL_MS, max_records=_MAX_RECORDS)
        started = time.perf_counter()
        for records in batch.values():
            for record in records:
                self._take(record)
        now = datetime.now(UTC)
        clock = time.monotonic()
        if clock - self._rules_at >= self.settings.alerts_rules_refresh:
            self._rules_at = clock
            async with self.pool.acquire() as conn:
                self.engine.set_rules(await store.load_rules(conn), now)
                self.engine.set_servers((await store.load_servers(conn)).keys(), now)
        lag = await self._lag()
        if lag == 0 and clock - self._tick_at >= self.settings.alerts_tick:
            self._tick_at = clock
            self.engine.tick(now)
        changes = self.engine.take()
        if batch or changes:
            positions = {
                (tp.topic, tp.partition): await self._consumer.position(tp)
                for tp in self._consumer.assignment()
            }
            async with self.pool.acquire() as conn:
                await store.save(conn, changes, positions)
            if changes.events:
                TELEMETRY.sent.labels(output="events").inc(len(changes.events))
                for event in changes.events:
                    log.info("%s: %s", event.status.value, event.summary)
                self._wake.set()
            with contextlib.suppress(*kafka.KAFKA_ERRORS):
                await self._consumer.commit()
            TELEMETRY.batch_seconds.observe(time.perf_counter() - started)

    def _take(self, record: ConsumerRecord) -> None:
        TELEMETRY.received.inc()
        try:
            if record.topic == self.settings.status_topic:
                self.engine.status(decode_message(ServerStatusChange, record.value))
            else:
                self.engine.window(decode_window_aggregate(record.value))
                self.windows += 1
        except InvalidMessage as exc:
            TELEMETRY.dropped.labels(reason=exc.reason.value).inc()
            log.warning(
                "skipped invalid message %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                exc.detail[:300],
            )

    async def _lag(self) -> int | None:
        """Messages behind the end of the input; None while an end is not known yet."""
        assert self._consumer is not None
        total = 0
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is None:
                return None
            total += max(0, high - await self._consumer.position(tp))
        TELEMETRY.lag.set(total)
        return total

    # -- delivery --------------------------------------------------------------------------
    async def _deliver_forever(self) -> None:
        s = self.settings
        backoff = Backoff(s.retry_min, s.retry_max, probe_every=s.retry_probe_every)
        outage: dict[str, Any] = {}
        while not self.stopping.is_set():
            self._wake.clear()
            failed = False
            for name, step in (
                ("kafka", self._publish),
                ("alertmanager", self._to_alertmanager),
                ("webhook", self._to_webhook),
            ):
                tracker = outage.setdefault(name, TELEMETRY.outage(name, log))
                try:
                    await step()
                except (DeliveryError, *kafka.KAFKA_ERRORS, *POSTGRES_ERRORS) as exc:  # type: ignore[misc]
                    TELEMETRY.errors.labels(kind=name).inc()
                    tracker.failed(describe(exc) if not isinstance(exc, DeliveryError) else exc)
                    failed = True
                else:
                    tracker.ok()
            if failed:
                await backoff.wait(None, self.stopping)
                continue
            backoff.reset()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    async def _publish(self) -> None:
        producer, pool = self._producer, self.pool
        if producer is None or pool is None:
            return
        pending = await store.undelivered(pool, "published_at")
        if not pending:
            return
        futures = []
        for _, body in pending:
            key = parse(body)["fingerprint"].encode()
            futures.append(await producer.send(self.settings.alerts_topic, body.encode(), key=key))
        await asyncio.gather(*futures)
        await store.delivered(pool, "published_at", [event_id for event_id, _ in pending])
        TELEMETRY.sent.labels(output="topic").inc(len(pending))

    async def _to_alertmanager(self) -> None:
        am, pool = self._alertmanager, self.pool
        if am is None or pool is None:
            return
        pending = await store.undelivered(pool, "alertmanager_at")
        if pending:
            await am.post([alertmanager_alert(parse(body)) for _, body in pending])
            await store.delivered(pool, "alertmanager_at", [event_id for event_id, _ in pending])
            TELEMETRY.sent.labels(output="alertmanager").inc(len(pending))
        clock = time.monotonic()
        if clock >= self._resend_at and self.leading.is_set():
            self._resend_at = clock + self.settings.alerts_resend
            until = resend_until(datetime.now(UTC), self.settings.alerts_resend)
            firing = [
                still_firing(rule, state.server_id, state.fired_at, state.value, until)
                for rule, state in self.engine.firing()
                if state.fired_at is not None
            ]
            await am.post(firing)

    async def _to_webhook(self) -> None:
        hook, pool = self._webhook, self.pool
        if hook is None or pool is None:
            return
        for event_id, body in await store.undelivered(pool, "webhook_at"):
            await hook.post(body)
            await store.delivered(pool, "webhook_at", [event_id])
            TELEMETRY.sent.labels(output="webhook").inc()


def _without_query(url: str) -> str:
    """A webhook URL as logged: a token in its query stays out of the log."""
    return url.split("?", 1)[0]
