"""The producer library: what any Python program uses to send metric events to Kafka.

    async with MetricProducer(ProducerSettings()) as producer:
        producer.send({"server_id": ..., "timestamp": ..., "cpu_usage": 12.5, ...})

`send()` validates the event against the v1 schema (raising `InvalidEvent`, which names the
bad fields) and puts it in a bounded in-memory buffer; it never waits for the broker. A
background task hands buffered events to an idempotent `acks=all` Kafka producer in order.
While the broker is unreachable events wait in the buffer; when it overflows the oldest waiting
events are dropped and counted (`dropped`). Leaving the `async with` block flushes what is
buffered, bounded by `flush_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from producers.settings import ProducerSettings
from runtime import kafka
from runtime.backoff import Backoff
from runtime.kafka import KeyPartitioner
from runtime.telemetry import Telemetry, telemetry
from schemas import RawMetricEvent
from schemas.messages import describe_validation_error

log = logging.getLogger(__name__)


class InvalidEvent(ValueError):
    """An event that does not match the raw event v1 schema; the message names the fields."""


@dataclass(frozen=True, slots=True)
class _Record:
    key: bytes
    value: bytes


@dataclass(frozen=True)
class ProducerStats:
    """Counts since the producer started."""

    accepted: int
    sent: int
    dropped: int
    errors: int
    buffered: int


class MetricProducer:
    """Sends raw metric events to `metrics.raw.v1` (or `topic`, or the settings' `raw_topic`),
    keyed by server_id."""

    def __init__(
        self,
        settings: ProducerSettings | None = None,
        *,
        topic: str | None = None,
        component: str = "producer",
    ) -> None:
        """`component` names the telemetry (`fleetpulse_<component>_sent_total`, …)."""
        self.settings = settings or ProducerSettings()
        self.topic = topic or self.settings.raw_topic
        self._buffer: deque[_Record] = deque()
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._accepted = self._sent = self._dropped = self._errors = 0
        self._last_drop_log = 0.0
        self._partition_of = KeyPartitioner()
        self.telemetry: Telemetry = telemetry(component)
        self._kafka = self.telemetry.outage("kafka", log)
        self._backoff = Backoff(
            self.settings.retry_min,
            self.settings.retry_max,
            probe_every=self.settings.retry_probe_every,
        )
        self._probe = kafka.broker_probe(self.settings)
        self.telemetry.declare(outputs=[self.topic], reasons=["overflow"], kinds=["kafka"])
        self._m_received = self.telemetry.received
        self._m_sent = self.telemetry.sent.labels(output=self.topic)
        self._m_dropped = self.telemetry.dropped.labels(reason="overflow")
        self._m_errors = self.telemetry.errors.labels(kind="kafka")
        self._m_buffered = self.telemetry.lag

    # -- public API --------------------------------------------------------------------------
    async def __aenter__(self) -> MetricProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the background sender. Does not wait for the broker to be reachable."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="fleetpulse-producer")

    def send(self, event: RawMetricEvent | Mapping[str, Any]) -> None:
        """Validate and buffer one event. Never blocks; raises `InvalidEvent` if invalid."""
        if not isinstance(event, RawMetricEvent):
            try:
                event = RawMetricEvent.model_validate_json(_json_of(event))
            except ValidationError as exc:
                raise InvalidEvent(
                    f"invalid metric event: {describe_validation_error(exc)}"
                ) from None
        self.send_encoded(event.server_id, event.to_json_bytes())

    def send_encoded(self, server_id: str, value: bytes) -> None:
        """Buffer an event already validated and encoded (the simulator's fast path)."""
        if self._stopping:
            raise RuntimeError("the producer is stopping")
        self._accepted += 1
        self._m_received.inc()
        if len(self._buffer) + self._in_flight >= self.settings.buffer_size:
            self._drop_oldest()
            if len(self._buffer) + self._in_flight >= self.settings.buffer_size:
                # Everything held is already with the Kafka client: the new event goes.
                self._count_dropped(1)
                return
        self._buffer.append(_Record(server_id.encode(), value))
        self._wakeup.set()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything buffered is acknowledged. False if `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._buffer or self._in_flight:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def stop(self, timeout: float | None = None) -> None:
        """Deliver what is buffered (up to `timeout`, default `flush_timeout`), then close."""
        timeout = self.settings.flush_timeout if timeout is None else timeout
        delivered = await self.flush(timeout)
        self._stopping = True
        if not delivered:
            log.warning(
                "producer stopping with %d events undelivered after %.1f s",
                self._held(),
                timeout,
            )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_client()

    @property
    def stats(self) -> ProducerStats:
        return ProducerStats(
            accepted=self._accepted,
            sent=self._sent,
            dropped=self._dropped,
            errors=self._errors,
            buffered=self._held(),
        )

    # -- internals ---------------------------------------------------------------------------
    def _drop_oldest(self) -> None:
        if self._buffer:
            self._buffer.popleft()
            self._count_dropped(1)

    def _count_dropped(self, n: int) -> None:
        self._dropped += n
        self._m_dropped.inc(n)
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:  # at most one line per 10 s
            self._last_drop_log = now
            log.warning(
                "buffer full (%d events): dropping the oldest; %d dropped so far",
                self.settings.buffer_size,
                self._dropped,
            )

    async def _connect(self) -> AIOKafkaProducer:
        """Start a Kafka client, retrying with backoff while the broker is away."""
        while True:
            client = kafka.producer(self.settings, "producer", partitioner=self._partition_of)
            try:
                await client.start()
                return client
            except kafka.KAFKA_ERRORS as exc:
                self._errors += 1
                self._m_errors.inc()
                self._kafka.failed(exc, detail=f"{self._held()} events held")
                with contextlib.suppress(Exception):
                    await client.stop()
                await self._backoff.wait(self._probe)

    def _held(self) -> int:
        return len(self._buffer) + self._in_flight

    async def _close_client(self) -> None:
        if self._producer is not None:
            client, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.stop(), timeout=5)

    async def _run(self) -> None:
        """Hand buffered events to Kafka in order, one chunk at a time; retry failures."""
        while True:
            if not self._buffer:
                self._wakeup.clear()
                self._m_buffered.set(0)
                await self._wakeup.wait()
                continue
            if self._producer is None:
                self._producer = await self._connect()
            chunk = [
                self._buffer.popleft()
                for _ in range(min(len(self._buffer), self.settings.max_chunk))
            ]
            self._in_flight = len(chunk)
            self._m_buffered.set(self._held())
            with self.telemetry.batch_seconds.time():
                failed = await self._deliver(self._producer, chunk)
            self._in_flight = 0
            if failed:
                # Put the undelivered back at the head, in order, and wait before retrying.
                self._buffer.extendleft(reversed(failed))
                while len(self._buffer) > self.settings.buffer_size:
                    self._drop_oldest()
                # A new client (a new producer id) for the retry: aiokafka's idempotent
                # producer gave the failed batches their sequence numbers, so the same client
                # resending them is refused with OutOfOrderSequenceNumber for good.
                await self._close_client()
                await self._backoff.wait(self._probe)
            else:
                self._backoff.reset()
                self._kafka.ok()

    async def _deliver(self, client: AIOKafkaProducer, chunk: list[_Record]) -> list[_Record]:
        """Send a chunk and wait for every acknowledgement; return the records that failed.

        Records are packed into one record batch per partition (several if one is full), which
        costs far less per event than one `send()` each; a batch is acknowledged whole.
        """
        try:
            partitions = sorted(await client.partitions_for(self.topic))
        except KafkaError as exc:
            self._count_errors(len(chunk), exc)
            return chunk
        by_partition: dict[int, list[_Record]] = {}
        for rec in chunk:
            partition = self._partition_of(rec.key, partitions, partitions)
            by_partition.setdefault(partition, []).append(rec)
        sends: list[tuple[list[_Record], asyncio.Future[Any]]] = []
        for partition, records in by_partition.items():
            batch = client.create_batch()
            in_batch: list[_Record] = []
            for rec in records:
                if batch.append(key=rec.key, value=rec.value, timestamp=None) is None:
                    sends.append((in_batch, await self._send_batch(client, batch, partition)))
                    batch, in_batch = client.create_batch(), []
                    batch.append(key=rec.key, value=rec.value, timestamp=None)
                in_batch.append(rec)
            sends.append((in_batch, await self._send_batch(client, batch, partition)))
        results = await asyncio.gather(*(f for _, f in sends), return_exceptions=True)
        lost: set[int] = set()
        first_error: BaseException | None = None
        for (records, _), res in zip(sends, results, strict=True):
            if isinstance(res, BaseException):
                first_error = first_error or res
                lost.update(id(r) for r in records)
        ok = len(chunk) - len(lost)
        self._sent += ok
        self._m_sent.inc(ok)
        if not lost:
            return []
        self._count_errors(len(lost), first_error)
        return [rec for rec in chunk if id(rec) in lost]

    async def _send_batch(
        self, client: AIOKafkaProducer, batch: Any, partition: int
    ) -> asyncio.Future[Any]:
        try:
            fut: asyncio.Future[Any] = await client.send_batch(
                batch, self.topic, partition=partition
            )
            return fut
        except KafkaError as exc:
            return _failed(exc)

    def _count_errors(self, n: int, exc: BaseException | None) -> None:
        self._errors += n
        self._m_errors.inc(n)
        self._kafka.failed(exc or "no acknowledgement", detail=f"{self._held()} events held")


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    return fut


def _json_of(event: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(event, default=_json_default).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"invalid metric event: not JSON-serialisable ({exc})") from None


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a JSON type")
