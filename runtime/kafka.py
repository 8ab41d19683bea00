"""Kafka clients as every FleetPulse service builds them: partitioner, consumer and producer
factories whose tuning and security (TLS, the service's SCRAM user) come from the settings;
and the one place that decides whether a Kafka error is worth retrying: by aiokafka's own
`retriable` flag (a broker away, a leader moving, a timeout are transient; an authorization
failure or a record too large are not)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, NodeNotReadyError
from aiokafka.partitioner import DefaultPartitioner

from runtime.backoff import Probe, parse_addresses, tcp_probe
from runtime.errors import CONNECTION_ERRORS, Disposition, is_connection_failure
from runtime.settings import KafkaSettings

#: What a retry loop around Kafka catches (then `disposition` decides).
KAFKA_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, KafkaError)


def disposition(exc: BaseException) -> Disposition:
    """TRANSIENT when aiokafka marks the error retriable, or the connection failed."""
    if isinstance(exc, KafkaTimeoutError):  # not flagged retriable, but a broker away
        return Disposition.TRANSIENT
    if isinstance(exc, KafkaError):
        # Connection-level errors (KafkaConnectionError, NodeNotReady, ...) are retriable.
        return Disposition.TRANSIENT if exc.retriable else Disposition.PERMANENT
    return Disposition.TRANSIENT


def is_away(exc: BaseException) -> bool:
    """Whether `exc` says the brokers could not be reached at all (refused, not ready, timed
    out), as opposed to an answer such as "not the leader" (a probe would not tell)."""
    if isinstance(exc, KafkaError):
        return isinstance(exc, KafkaConnectionError | NodeNotReadyError | KafkaTimeoutError)
    return is_connection_failure(exc)


_DEFAULT_PARTITIONER: Final = DefaultPartitioner()
_PARTITION_CACHE_MAX: Final = 200_000


class KeyPartitioner:
    """Kafka's default partition of a keyed record (murmur2 of the key, as every stock client
    computes it): where a server's records land. Cached per key, since aiokafka's murmur2 is
    pure Python and costs more than encoding the record. Fits `AIOKafkaProducer(partitioner=)`.
    """

    def __init__(self) -> None:
        self._cache: dict[bytes, int] = {}
        self._count = 0

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(_DEFAULT_PARTITIONER(key, all_partitions, available))
        if len(all_partitions) != self._count or len(self._cache) > _PARTITION_CACHE_MAX:
            self._cache.clear()
            self._count = len(all_partitions)
        p = self._cache.get(key)
        if p is None:
            p = self._cache[key] = int(_DEFAULT_PARTITIONER(key, all_partitions, all_partitions))
        return p


class RecordBatches:
    """Records for one producer, built into one record batch per topic partition and sent
    with `send_batch`: `send()` costs a future, a partitioner call and a metadata look-up per
    record. A key lands where `send()` (and every stock client) would put it; records keep
    their order per partition. Open it with the topics it may take, `add` records, then
    `send()`: the futures it returns resolve when each batch is acknowledged."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        partitions: dict[str, list[int]],
        partitioner: KeyPartitioner,
    ) -> None:
        self._producer = producer
        self._partitions = partitions
        self._partition = partitioner
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[str, int, Any]] = []
        self.records = 0

    @classmethod
    async def open(
        cls, producer: AIOKafkaProducer, topics: Iterable[str], partitioner: KeyPartitioner
    ) -> RecordBatches:
        """Batches for `topics` (their partitions are looked up once, here)."""
        partitions = {t: sorted(await producer.partitions_for(t)) for t in topics}
        return cls(producer, partitions, partitioner)

    def add(self, topic: str, key: bytes | None, value: bytes) -> None:
        partitions = self._partitions[topic]
        tp = (topic, self._partition(key, partitions, partitions))
        batch = self._open.get(tp)
        if batch is None:
            batch = self._open[tp] = self._producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full
            self._full.append((*tp, batch))
            batch = self._open[tp] = self._producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # a first record always fits
        self.records += 1

    async def send(self) -> list[asyncio.Future[Any]]:
        """Hand every batch to the producer, in order per partition; empties this."""
        batches = self._full + [(t, p, b) for (t, p), b in self._open.items()]
        self._full, self._open = [], {}
        send = self._producer.send_batch
        futures = []
        for topic, partition, batch in batches:
            batch.close()  # nothing else joins it through `send()`
            futures.append(await send(batch, topic, partition=partition))
        return futures


def consumer(
    settings: KafkaSettings,
    role: str,
    *topics: str,
    group: str | None = None,
    max_poll_records: int | None = None,
    listener: ConsumerRebalanceListener | None = None,
) -> AIOKafkaConsumer:
    """A consumer for `role` (its client id is `<kafka_client_id>-<role>`), tuned by the
    settings. With a `group`, offsets are committed by the caller only, never automatically,
    and a new group starts from the earliest record: nothing is skipped."""
    s = settings
    client = AIOKafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap,
        client_id=f"{s.kafka_client_id}-{role}",
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        fetch_max_bytes=s.kafka_fetch_max_bytes,
        max_partition_fetch_bytes=s.kafka_partition_fetch_max_bytes,
        session_timeout_ms=s.kafka_session_timeout_ms,
        heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
        request_timeout_ms=max(s.kafka_request_timeout_ms, s.kafka_session_timeout_ms + 5000),
        **s.kafka_security(),
    )
    if topics:
        client.subscribe(list(topics), listener=listener)
    return client


def producer(
    settings: KafkaSettings, role: str, *, partitioner: Callable[..., int] | None = None
) -> AIOKafkaProducer:
    """An idempotent `acks=all` producer for `role`, tuned by the settings (compression,
    linger, batch size). Records with a key land where any stock client puts them."""
    s = settings
    return AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap,
        client_id=f"{s.kafka_client_id}-{role}",
        acks="all",
        enable_idempotence=True,
        compression_type=None if s.compression == "none" else s.compression,
        linger_ms=s.linger_ms,
        max_batch_size=s.kafka_max_batch_bytes,
        request_timeout_ms=s.kafka_request_timeout_ms,
        partitioner=partitioner or KeyPartitioner(),
        **s.kafka_security(),
    )


def admin(settings: KafkaSettings, role: str = "admin") -> AIOKafkaAdminClient:
    """An admin client (topic creation, offsets of groups)."""
    s = settings
    return AIOKafkaAdminClient(
        bootstrap_servers=s.kafka_bootstrap,
        client_id=f"{s.kafka_client_id}-{role}",
        request_timeout_ms=s.kafka_request_timeout_ms,
        **s.kafka_security(),
    )


def broker_probe(settings: KafkaSettings) -> Probe:
    """A cheap readiness check of the brokers (a TCP connect to any bootstrap address)."""
    return tcp_probe(parse_addresses(settings.kafka_bootstrap))
