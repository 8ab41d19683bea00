"""Integration: GET /servers/{id}/metrics and /chart (`registry/api/routes/metrics.py`) serve the
sinks' read path, bounded in points; the chart page itself is checked in
`tests/registry/test_chart.py`."""

from __future__ import annotations

import uuid

import pytest

from tests.factories import server_body
from tests.registry.harness import Api, server_with_rows

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
