"""Topic specs: the public names and sane partitioning."""

from __future__ import annotations

from schemas.topics import AGG_1D, AGG_1H, AGG_5S, ALL_TOPICS, DLQ, RAW, STATUS


def test_public_topic_names() -> None:
    assert [t.name for t in (RAW, AGG_5S, AGG_1H, AGG_1D, STATUS, DLQ)] == [
        "metrics.raw.v1",
        "metrics.agg.5s.v1",
        "metrics.agg.1h.v1",
        "metrics.agg.1d.v1",
        "metrics.status.v1",
        "metrics.dlq.v1",
    ]
    assert len({t.name for t in ALL_TOPICS}) == len(ALL_TOPICS)


def test_partitions_and_retention() -> None:
    for t in ALL_TOPICS:
        assert t.partitions >= 1
        assert int(t.config()["retention.ms"]) == t.retention_ms > 0
    # The stream reads raw and writes 5 s windows with the same key: same partition count
    # keeps a server on the same partition number end to end.
    assert RAW.partitions == AGG_5S.partitions
    assert STATUS.config()["cleanup.policy"] == "compact,delete"
