"""The stream worker's per-resolution settings (output topics, grace): the table's unless a
variable says; its own compression default."""

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


def test_grace_by_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert StreamSettings().grace == {"5s": 5.0, "1h": 5.0, "1d": 5.0}
    monkeypatch.setenv("FLEETPULSE_GRACE__5S", "1")
    monkeypatch.setenv("FLEETPULSE_GRACE_1D", "30")  # the name of earlier releases
    assert StreamSettings().grace == {"5s": 1.0, "1h": 5.0, "1d": 30.0}
    monkeypatch.setenv("FLEETPULSE_GRACE__1D", "20")  # the mapping wins over the older name
    assert StreamSettings().grace["1d"] == 20.0


def test_a_grace_that_cannot_work_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPULSE_GRACE__5S", "10")
    with pytest.raises(ValueError, match="grace of 1h, 1d must be at least the 5s grace"):
        StreamSettings()
    with pytest.raises(ValueError, match="no resolution 1w"):
        StreamSettings(grace={"1w": 5})
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        StreamSettings(grace={"5s": -1})


def test_the_worker_compresses_with_zstd_unless_told(clean_env: pytest.MonkeyPatch) -> None:
    assert StreamSettings().compression == "zstd"  # the other services: lz4
    clean_env.setenv("FLEETPULSE_COMPRESSION", "gzip")
    assert StreamSettings().compression == "gzip"
