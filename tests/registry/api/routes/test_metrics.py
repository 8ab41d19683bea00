"""Integration: GET /servers/{id}/metrics and /chart (`registry/api/routes/metrics.py`) serve the
sinks' read path, bounded in points; the chart page itself is checked in
`tests/registry/test_chart.py`."""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from schemas import Resolution
from sinks.rows import TABLES, to_row
from tests.factories import aggregate, server_body
from tests.registry.harness import Api, new_user, server_with_rows

pytestmark = pytest.mark.integration


def test_a_series_with_gaps_filled(api: Api, admin_token: str) -> None:
    # Two 5 s rows in one minute, a gap, one row two minutes later (inside today's partitions).
    server_id, user_token, params = server_with_rows(
        api, admin_token, [(0, 10.0), (5, 30.0), (120, 50.0)], minutes=3
    )
    r = api.request("GET", f"/servers/{server_id}/metrics", user_token, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["server_id"] == server_id and body["step"] == "1m"
    points = body["points"]
    assert [p["samples"] for p in points] == [10, 0, 5]
    assert points[0]["cpu_usage_avg"] == 20.0 and points[0]["cpu_usage_max"] == 30.0
    assert points[0]["network_rx"] == 200
    assert points[1]["cpu_usage_avg"] is None
    assert points[2]["cpu_usage_avg"] == 50.0


def test_too_many_points_is_a_400_that_says_the_limit(api: Api, admin_token: str) -> None:
    server = api.request("POST", "/servers", admin_token, json=server_body()).json()
    params = {"from": "2026-01-01T00:00:00Z", "to": "2026-11-01T00:00:00Z", "step": "1m"}
    r = api.request("GET", f"/servers/{server['id']}/metrics", admin_token, params=params)
    assert r.status_code == 400
    assert f"at most {api.settings.max_points}" in r.json()["detail"]
    params["step"] = "1d"
    r = api.request("GET", f"/servers/{server['id']}/metrics", admin_token, params=params)
    assert r.status_code == 200 and len(r.json()["points"]) == 304


@pytest.mark.parametrize(
    ("params", "code", "word"),
    [
        ({"step": "7m"}, 422, "step"),
        ({"from": "yesterday"}, 422, "from"),
        ({"from": "2026-11-25T10:00:00"}, 422, "from"),
        ({"to": "9999-12-31T23:59:59Z"}, 422, "to"),
        ({"from": "0001-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, 422, "from"),
        ({"from": "2026-11-25T11:00:00Z", "to": "2026-11-25T10:00:00Z"}, 400, "to must be after"),
    ],
)
def test_bad_ranges_are_refused_with_a_message(
    api: Api, admin_token: str, params: dict[str, str], code: int, word: str
) -> None:
    server = api.request("POST", "/servers", admin_token, json=server_body()).json()
    r = api.request("GET", f"/servers/{server['id']}/metrics", admin_token, params=params)
    assert r.status_code == code, r.text
    assert word in r.json()["detail"]


def test_unknown_server_is_404(api: Api, admin_token: str) -> None:
    r = api.request("GET", f"/servers/{uuid.uuid4()}/metrics", admin_token)
    assert r.status_code == 404


def test_the_chart_needs_a_token_and_a_known_server(api: Api, admin_token: str) -> None:
    server = api.request("POST", "/servers", admin_token, json=server_body()).json()
    assert api.request("GET", f"/servers/{server['id']}/chart").status_code == 401
    unknown = "00000000-0000-4000-8000-000000000000"
    assert api.request("GET", f"/servers/{unknown}/chart", admin_token).status_code == 404


def _hourly_rows(api: Api, admin_token: str, hour: datetime) -> dict[str, list[float]]:
    """Two servers with an hour each of raw CPU samples behind their hourly row: id → samples."""
    samples = {}
    table = TABLES[Resolution.ONE_HOUR]
    columns = ", ".join(f'"{c}"' for c in table.names)
    marks = ", ".join(f"${i}" for i in range(1, len(table.names) + 1))
    for n in range(2):
        sid = api.request("POST", "/servers", admin_token, json=server_body()).json()["id"]
        cpu = [float((i * 7 + n * 13) % 97) for i in range(3600)]
        agg = aggregate(sid, hour, Resolution.ONE_HOUR, samples={"cpu_usage": cpu})
        api.sql(
            f"INSERT INTO metrics_hourly ({columns}) VALUES ({marks})", *to_row(agg), as_owner=True
        )
        samples[sid] = cpu
    return samples


def _exact(values: list[float], q: float) -> float:
    return sorted(values)[math.floor(q * (len(values) - 1))]


def test_percentiles_per_server_and_across_the_fleet(api: Api, admin_token: str) -> None:
    hour = datetime.fromtimestamp(math.floor(time.time() / 3600) * 3600 - 7200, UTC)
    samples = _hourly_rows(api, admin_token, hour)
    _, _, user_token = new_user(api, admin_token)
    params = {"from": hour.isoformat(), "to": (hour + timedelta(hours=2)).isoformat(), "step": "1h"}
    sid, cpu = next(iter(samples.items()))
    r = api.request("GET", f"/servers/{sid}/metrics", user_token, params={**params, "stat": "p99"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["server_id"], body["stat"], body["step"]) == (sid, "p99", "1h")
    first, empty = body["points"]
    assert abs(first["cpu_usage"] - _exact(cpu, 0.99)) <= 0.01 * _exact(cpu, 0.99)
    assert first["samples"] == 3600 and empty["samples"] == 0 and empty["cpu_usage"] is None
    # Without `stat`, every statistic, percentiles included.
    r = api.request("GET", f"/servers/{sid}/metrics", user_token, params=params)
    assert r.json()["points"][0]["cpu_usage_p99"] == first["cpu_usage"]

    every = [v for values in samples.values() for v in values]
    for stat in ("p95", "p50", "avg", "max"):
        r = api.request("GET", "/fleet/metrics", user_token, params={**params, "stat": stat})
        assert r.status_code == 200, r.text
        [point, _] = r.json()["points"]
        assert point["servers"] >= 2  # (and any other test's in that hour)
    listed = ",".join(samples)
    r = api.request(
        "GET", "/fleet/metrics", user_token, params={**params, "stat": "p95", "servers": listed}
    )
    [point, _] = r.json()["points"]
    assert point["servers"] == 2 and point["samples"] == 7200
    assert abs(point["cpu_usage"] - _exact(every, 0.95)) <= 0.01 * _exact(every, 0.95)
    assert r.json()["servers"] == list(samples)


@pytest.mark.parametrize(
    ("path", "params", "code", "word"),
    [
        ("/fleet/metrics", {"step": "1m", "stat": "p99"}, 400, "use step 1h or 1d"),
        ("/fleet/metrics", {"step": "1h", "stat": "p42"}, 422, "stat"),
        ("/fleet/metrics", {"step": "1h"}, 422, "stat"),
        (
            "/fleet/metrics",
            {"step": "1h", "stat": "avg", "servers": "nope"},
            422,
            "not a server id",
        ),
        ("/servers/{id}/metrics", {"step": "5m", "stat": "p95"}, 400, "use step 1h or 1d"),
        ("/servers/{id}/metrics", {"step": "1h", "stat": "median"}, 422, "stat"),
    ],
)
def test_a_statistic_a_step_cannot_give_is_refused_with_why(
    api: Api, admin_token: str, path: str, params: dict[str, str], code: int, word: str
) -> None:
    server = api.request("POST", "/servers", admin_token, json=server_body()).json()
    r = api.request("GET", path.format(id=server["id"]), admin_token, params=params)
    assert r.status_code == code, r.text
    assert word in r.text


def test_the_fleet_needs_a_login(api: Api) -> None:
    assert api.request("GET", "/fleet/metrics", params={"stat": "avg"}).status_code == 401
