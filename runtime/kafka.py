"""Kafka clients as every FleetPulse service builds them: partitioner, consumer and producer
factories whose tuning comes from the settings."""

from __future__ import annotations

from typing import Final

from aiokafka.partitioner import DefaultPartitioner

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
