"""The stream worker's output topics, by resolution: the table's unless a variable says; its own
compression default."""

from __future__ import annotations

import pytest

from streams.settings import StreamSettings


def test_output_topics_by_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert StreamSettings().agg_topics == {
        "5s": "metrics.agg.5s.v1",
        "1h": "metrics.agg.1h.v1",
        "1d": "metrics.agg.1d.v1",
    }
    monkeypatch.setenv("FLEETPULSE_AGG_5S_TOPIC", "old.5s")  # the name of earlier releases
    monkeypatch.setenv("FLEETPULSE_AGG_TOPICS__1D", "new.1d")
    topics = StreamSettings(agg_1h_topic="kwarg.1h").agg_topics
    assert topics == {"5s": "old.5s", "1h": "kwarg.1h", "1d": "new.1d"}
    with pytest.raises(ValueError, match="no resolution 5m"):
        StreamSettings(agg_topics={"5m": "x"})


def test_the_worker_compresses_with_zstd_unless_told(clean_env: pytest.MonkeyPatch) -> None:
    assert StreamSettings().compression == "zstd"  # the other services: lz4
    clean_env.setenv("FLEETPULSE_COMPRESSION", "gzip")
    assert StreamSettings().compression == "gzip"
