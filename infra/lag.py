"""`fleetpulse lag`: how far each consumer group of the pipeline is behind, and the dead letters.

Read from the broker alone (committed offsets against end offsets), so it works whatever runs
where: the stream workers' group on the raw topic, the sinks' group on the aggregate topics, the
registry's group on the status topic.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from runtime import kafka
from runtime.settings import KafkaSettings


@dataclass(frozen=True)
class TopicLag:
    group: str
    topic: str
    partitions: int
    committed: int  # partitions with a committed offset
    end: int  # sum of the partitions' end offsets
    behind: int  # messages between the committed offsets (or the start) and the end


async def partitions(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, list[int]]:
    """Each existing topic's partition numbers (topics the broker does not know are left out)."""
    out: dict[str, list[int]] = {}
    for described in await admin.describe_topics(topics):
        if described["partitions"]:
            out[described["topic"]] = sorted(p["partition"] for p in described["partitions"])
    return out


async def group_lag(
    admin: AIOKafkaAdminClient,
    consumer: AIOKafkaConsumer,
    group: str,
    topics: dict[str, list[int]],
    ends: dict[TopicPartition, int] | None = None,
) -> list[TopicLag] | None:
    """Per topic, how far `group` is behind; None while the group has committed nothing (or
    its coordinator is not ready). A partition without a commit counts from its start."""
    try:
        committed = await admin.list_consumer_group_offsets(group)
    except KafkaError:
        return None
    if not committed:
        return None
    tps = [TopicPartition(t, p) for t, parts in topics.items() for p in parts]
    if ends is None:
        ends = await consumer.end_offsets(tps)
    begins = await consumer.beginning_offsets(tps)
    out = []
    for topic, parts in topics.items():
        mine = [TopicPartition(topic, p) for p in parts]
        done = [tp for tp in mine if tp in committed and committed[tp].offset >= 0]
        behind = sum(ends[tp] - (committed[tp].offset if tp in done else begins[tp]) for tp in mine)
        end = sum(ends[tp] for tp in mine)
        out.append(TopicLag(group, topic, len(mine), len(done), end, behind))
    return out


async def report(settings: KafkaSettings, groups: dict[str, list[str]], dlq: str) -> str:
    """The text `fleetpulse lag` prints."""
    # A command someone waits for: an unreachable broker is reported after 10 s, not 30.
    settings = settings.model_copy(update={"kafka_request_timeout_ms": 10_000})
    admin = kafka.admin(settings, "lag")
    await admin.start()
    try:
        consumer = kafka.consumer(settings, "lag")
        await consumer.start()
        try:
            wanted = sorted({t for ts in groups.values() for t in ts} | {dlq})
            known = await partitions(admin, wanted)
            lines = [f"{'group':28} {'topic':22} {'partitions':>10} {'end':>14} {'behind':>12}"]
            for group, topics in groups.items():
                present = {t: known[t] for t in topics if t in known}
                lags = await group_lag(admin, consumer, group, present)
                if lags is None:
                    lines.append(f"{group:28} {'(no committed offsets yet)':22}")
                    continue
                for lag in lags:
                    note = "" if lag.committed == lag.partitions else (
                        f"  ({lag.partitions - lag.committed} partitions never committed)"
                    )  # fmt: skip
                    lines.append(
                        f"{group:28} {lag.topic:22} {lag.partitions:>10} {lag.end:>14,} "
                        f"{lag.behind:>12,}{note}"
                    )
            missing = [t for t in wanted if t not in known]
            if dlq in known:
                tps = [TopicPartition(dlq, p) for p in known[dlq]]
                ends = await consumer.end_offsets(tps)
                begins = await consumer.beginning_offsets(tps)
                held = sum(ends[tp] - begins[tp] for tp in tps)
                lines.append(
                    f"dead letters in {dlq}: {sum(ends.values()):,} written, {held:,} still held"
                )
            if missing:
                lines.append(f"topics not on the broker: {', '.join(missing)}")
            return "\n".join(lines)
        finally:
            await consumer.stop()
    finally:
        await admin.close()
