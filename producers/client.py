"""The producer library: what any Python program uses to send metric events to Kafka.

    async with MetricProducer(ProducerSettings()) as producer:
        producer.send({"server_id": ..., "timestamp": ..., "cpu_usage": 12.5, ...})

`send()` validates the event against the v1 schema (raising `InvalidEvent`, which names the
bad fields) and puts it in a bounded in-memory buffer; it never waits for the broker. A
background task hands buffered events to an idempotent `acks=all` Kafka producer in order.
While the broker is unreachable events wait in the buffer; when it overflows the oldest waiting
events are dropped and counted (`dropped`). Leaving the `async with` block flushes what is
buffered, bounded by `flush_timeout`.

With `spool_dir` set, every accepted event is also written to an on-disk spool
(`producers/spool.py`) by a second task, in fsync'd batches, and leaves it only once Kafka has
acknowledged it; events a previous run left there are sent first, in order. The spool's byte
bound replaces the buffer's: when it is full, new events are dropped (`dropped`, reason
`spool_full`) and what is spooled stays. A crash loses only the events accepted since the last
batch began its fsync, and may re-send those acknowledged since the last commit of the spool's
pointer (at most about a second's worth).
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
from pathlib import Path
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter
from pydantic import ValidationError

from producers.settings import ProducerSettings
from producers.spool import COMMIT_INTERVAL, Spool, SpoolRecord
from runtime import kafka
from runtime.backoff import Backoff
from runtime.errors import describe
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


#: What the sender hands to Kafka: a record held in memory only, or one also in the spool.
_Outgoing = _Record | SpoolRecord


@dataclass(frozen=True)
class ProducerStats:
    """Counts since the producer started."""

    accepted: int
    sent: int
    dropped: int
    errors: int
    buffered: int
    #: Events written (fsync'd) to the spool, and read back from it at the start.
    spooled: int = 0
    replayed: int = 0


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
        self._buffer: deque[_Outgoing] = deque()
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
        self._spool: Spool | None = None
        self._unspooled: list[SpoolRecord] = []  # accepted, waiting for the spool task
        self._spool_wakeup = asyncio.Event()
        self._spool_task: asyncio.Task[None] | None = None
        self._spool_closing = False
        self._spooled = self._replayed = 0
        self._last_spool_error_log = 0.0
        if self.settings.spool_dir is not None:
            self._open_spool(self.settings.spool_dir)

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
        if self._spool is not None and self._spool_task is None:
            self._spool_task = asyncio.create_task(self._spool_run(), name="fleetpulse-spool")
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
        if self._spool is not None:
            rec = self._spool.add(server_id.encode(), value)
            if rec is None:
                self._count_dropped(1, self._m_spool_full, self._spool_full)
                return
            self._unspooled.append(rec)
            self._spool_wakeup.set()
            return
        if len(self._buffer) + self._in_flight >= self.settings.buffer_size:
            self._drop_oldest()
            if len(self._buffer) + self._in_flight >= self.settings.buffer_size:
                # Everything held is already with the Kafka client: the new event goes.
                self._count_dropped(1, self._m_dropped)
                return
        self._buffer.append(_Record(server_id.encode(), value))
        self._wakeup.set()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything buffered is acknowledged. False if `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._buffer or self._in_flight or self._unspooled:
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
        await self._close_spool()

    @property
    def stats(self) -> ProducerStats:
        return ProducerStats(
            accepted=self._accepted,
            sent=self._sent,
            dropped=self._dropped,
            errors=self._errors,
            buffered=self._held(),
            spooled=self._spooled,
            replayed=self._replayed,
        )

    # -- internals ---------------------------------------------------------------------------
    def _drop_oldest(self) -> None:
        if self._buffer:
            self._buffer.popleft()
            self._count_dropped(1, self._m_dropped)

    def _count_dropped(self, n: int, metric: Counter, why: str | None = None) -> None:
        self._dropped += n
        metric.inc(n)
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:  # at most one line per 10 s
            self._last_drop_log = now
            why = why or f"buffer full ({self.settings.buffer_size} events): dropping the oldest"
            log.warning("%s; %d dropped so far", why, self._dropped)

    # -- the spool ---------------------------------------------------------------------------
    def _open_spool(self, path: Path) -> None:
        self._spool = spool = Spool(path, self.settings.spool_max_bytes)
        self.telemetry.declare(reasons=["spool_full", "spool_corrupt"], kinds=["spool"])
        self._m_spool_full = self.telemetry.dropped.labels(reason="spool_full")
        self._m_spool_errors = self.telemetry.errors.labels(kind="spool")
        self._spool_full = f"spool full ({spool.max_bytes} bytes): dropping new events"
        if spool.corrupt:
            # A torn record is one the crash cut short: at least one event per place.
            self._count_dropped(
                spool.corrupt,
                self.telemetry.dropped.labels(reason="spool_corrupt"),
                f"spool {path}: {spool.corrupt} torn or damaged records skipped",
            )
        self._buffer.extend(spool.recovered)
        self._replayed = len(spool.recovered)
        spool.recovered = []

    async def _spool_run(self) -> None:
        """Write accepted events to the spool, one fsync'd batch at a time, then hand them to
        the sender; commit the acknowledged ones about once per `COMMIT_INTERVAL`. Runs until
        `_close_spool()` asks it to finish, then writes what is left and commits."""
        spool = self._spool
        assert spool is not None
        last_commit = time.monotonic()
        while True:
            if self._unspooled:
                batch, self._unspooled = self._unspooled, []
                try:
                    await asyncio.to_thread(spool.append, batch)
                    self._spooled += len(batch)
                except Exception as exc:  # a full disk, say: the events still go to Kafka
                    self._spool_failed(exc, len(batch))
                self._buffer.extend(batch)
                self._wakeup.set()
                continue
            if self._spool_closing:
                return  # (the spool's close() commits)
            now = time.monotonic()
            if spool.uncommitted and now - last_commit >= COMMIT_INTERVAL:
                try:
                    await asyncio.to_thread(spool.commit)
                except Exception as exc:
                    self._spool_failed(exc, 0)
                last_commit = now
                continue
            self._spool_wakeup.clear()
            timeout = None
            if spool.uncommitted:
                timeout = max(0.0, last_commit + COMMIT_INTERVAL - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._spool_wakeup.wait(), timeout)

    def _spool_failed(self, exc: BaseException, events: int) -> None:
        self._m_spool_errors.inc()
        now = time.monotonic()
        if now - self._last_spool_error_log >= 10.0:
            self._last_spool_error_log = now
            held = f" ({events} events held in memory only)" if events else ""
            log.error("spool: %s%s", describe(exc), held)

    async def _close_spool(self) -> None:
        spool = self._spool
        if spool is None:
            return
        if self._spool_task is not None:
            self._spool_closing = True
            self._spool_wakeup.set()
            try:
                await self._spool_task
            finally:
                self._spool_task = None
        elif self._unspooled:  # never started: keep them for the next run
            batch, self._unspooled = self._unspooled, []
            try:
                await asyncio.to_thread(spool.append, batch)
                self._spooled += len(batch)
            except Exception as exc:
                self._spool_failed(exc, len(batch))
        held = spool.held
        await asyncio.to_thread(spool.close)
        self._spool = None
        if held:
            log.warning("spool %s: %d events kept for the next start", spool.path, held)

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
        return len(self._buffer) + self._in_flight + len(self._unspooled)

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
            if self._spool is not None:
                self._ack(chunk, failed)
            if failed:
                # Put the undelivered back at the head, in order, and wait before retrying.
                self._buffer.extendleft(reversed(failed))
                while self._spool is None and len(self._buffer) > self.settings.buffer_size:
                    self._drop_oldest()
                # A new client (a new producer id) for the retry: aiokafka's idempotent
                # producer gave the failed batches their sequence numbers, so the same client
                # resending them is refused with OutOfOrderSequenceNumber for good.
                await self._close_client()
                await self._backoff.wait(self._probe)
            else:
                self._backoff.reset()
                self._kafka.ok()

    def _ack(self, chunk: list[_Outgoing], failed: list[_Outgoing]) -> None:
        """Mark the spooled records of `chunk` that Kafka acknowledged."""
        lost = {id(r) for r in failed}
        Spool.ack(r for r in chunk if isinstance(r, SpoolRecord) and id(r) not in lost)
        self._spool_wakeup.set()

    async def _deliver(self, client: AIOKafkaProducer, chunk: list[_Outgoing]) -> list[_Outgoing]:
        """Send a chunk and wait for every acknowledgement; return the records that failed.

        Records are packed into one record batch per partition (several if one is full), which
        costs far less per event than one `send()` each; a batch is acknowledged whole.
        """
        try:
            partitions = sorted(await client.partitions_for(self.topic))
        except KafkaError as exc:
            self._count_errors(len(chunk), exc)
            return chunk
        by_partition: dict[int, list[_Outgoing]] = {}
        for rec in chunk:
            partition = self._partition_of(rec.key, partitions, partitions)
            by_partition.setdefault(partition, []).append(rec)
        sends: list[tuple[list[_Outgoing], asyncio.Future[Any]]] = []
        for partition, records in by_partition.items():
            batch = client.create_batch()
            in_batch: list[_Outgoing] = []
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
