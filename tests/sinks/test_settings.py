"""The sink's per-resolution settings: defaults from the resolutions table, one variable per
entry or a JSON object, and the variables of earlier releases still read."""

from __future__ import annotations

import pytest

from runtime.settings import SINK_ROLE
from schemas import RESOLUTIONS
from sinks.settings import SinkSettings


def test_defaults_come_from_the_resolutions_table() -> None:
    s = SinkSettings()
    assert s.agg_topics == {r.name: r.topic for r in RESOLUTIONS}
    assert s.retention_days == {"5s": 30, "1h": 400, "1d": None}


def test_the_sink_logs_in_as_its_own_role(clean_env: pytest.MonkeyPatch) -> None:
    s = SinkSettings()
    assert s.pg_user == SINK_ROLE
    assert s.password_path == s.home_dir / "secrets" / "pg" / SINK_ROLE


def test_one_entry_per_variable_or_a_json_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPULSE_RETENTION_DAYS__1H", "60")
    monkeypatch.setenv("FLEETPULSE_AGG_TOPICS", '{"1d": "other.1d"}')
    s = SinkSettings()
    assert s.retention_days == {"5s": 30, "1h": 60, "1d": None}
    assert s.agg_topics["1d"] == "other.1d" and s.agg_topics["5s"] == "metrics.agg.5s.v1"
    monkeypatch.setenv("FLEETPULSE_RETENTION_DAYS", '{"1h": null}')
    monkeypatch.delenv("FLEETPULSE_RETENTION_DAYS__1H")
    assert SinkSettings().retention_days["1h"] is None  # forever


def test_the_older_variables_still_work_and_the_mapping_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETPULSE_RETENTION_5S_DAYS", "10")
    monkeypatch.setenv("FLEETPULSE_RETENTION_HOURLY_DAYS", "20")
    monkeypatch.setenv("FLEETPULSE_RETENTION_DAYS__1H", "21")
    monkeypatch.setenv("FLEETPULSE_AGG_1H_TOPIC", "old.1h")
    s = SinkSettings(retention_daily_days=None)  # given, so: forever (as before)
    assert s.retention_days == {"5s": 10, "1h": 21, "1d": None}
    assert s.agg_topics["1h"] == "old.1h"


def test_an_unknown_resolution_or_a_bad_value_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETPULSE_RETENTION_DAYS__1W", "3")
    with pytest.raises(ValueError, match="no resolution 1w"):
        SinkSettings()
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        SinkSettings(retention_days={"1h": 0})
