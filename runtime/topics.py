"""Creating topics as their specs say: the contract's topics (`fleetpulse topics create`) and a
stream group's changelog."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from runtime.kafka import admin as admin_client
from runtime.settings import KafkaSettings
from schemas.topics import ALL_TOPICS, RAW, TopicSpec, changelog_topic


@dataclass(frozen=True)
class TopicResult:
    spec: TopicSpec
    created: bool
    partitions: int


async def create_contract_topics(settings: KafkaSettings, changelog: str) -> list[TopicResult]:
    """The contract's topics, then the stream group's changelog `changelog`, partitioned like
    the raw topic (`fleetpulse topics create`: a stream worker's own user may not create it)."""
    results = await create_topics(settings)
    raw = next(r for r in results if r.spec.name == RAW.name)
    return results + await create_topics(settings, [changelog_topic(changelog, raw.partitions)])


async def create_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec] = ALL_TOPICS
) -> list[TopicResult]:
    """Create missing topics, with the cluster's replication factor and `min.insync.replicas`
    (`KafkaSettings.kafka_replication_factor`); report existing ones with their partition count.

    An existing topic with fewer partitions than its spec is grown to match (Kafka cannot
    shrink a topic, so one with more is left alone and reported).
    """
    specs = list(specs)
    admin = admin_client(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            replicas = settings.kafka_replication_factor
            insync = {"min.insync.replicas": str(settings.kafka_min_insync)}
            response = await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, replicas, topic_configs=s.config() | insync)
                    for s in missing
                ]
            )
            _raise_errors(response.topic_errors)
        counts = await _partition_counts(
            admin, specs, at_least={s.name: s.partitions for s in missing}
        )
        grow = {
            s.name: NewPartitions(total_count=s.partitions)
            for s in specs
            if s.name in existing and counts[s.name] < s.partitions
        }
        if grow:
            await admin.create_partitions(grow)
            counts = await _partition_counts(
                admin, specs, at_least={name: g.total_count for name, g in grow.items()}
            )
        results = []
        for spec in specs:
            results.append(TopicResult(spec, spec.name not in existing, counts.get(spec.name, 0)))
        return results
    finally:
        await admin.close()


def _raise_errors(topic_errors: list[tuple[Any, ...]]) -> None:
    """Raise the first refusal in a CreateTopics answer (a topic created meanwhile by another
    caller is no refusal): an authorization failure is `TopicAuthorizationFailedError`."""
    for topic, code, *rest in topic_errors:
        if code and code != TopicAlreadyExistsError.errno:
            message = rest[0] if rest and rest[0] else ""
            raise for_code(code)(f"creating topic {topic!r}: {message}".rstrip(": "))


async def _partition_counts(
    admin: AIOKafkaAdminClient,
    specs: list[TopicSpec],
    at_least: dict[str, int],
    timeout: float = 15.0,
) -> dict[str, int]:
    """Partition count of each topic, waiting until the ones just created or grown show up in
    the broker's metadata (which lags the admin call by a moment)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        described = await admin.describe_topics([s.name for s in specs])
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        if all(counts.get(n, 0) >= c for n, c in at_least.items()) or loop.time() > deadline:
            return counts
        await asyncio.sleep(0.1)
