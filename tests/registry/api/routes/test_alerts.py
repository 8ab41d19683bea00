"""Integration: /alerts over HTTP (`registry/api/routes/alerts.py`): admins create, replace and
delete rules, users read them; an invalid rule is a 422 naming the field; an unknown server
or rule is refused; the history and the firing alerts read what the evaluator stored."""

from __future__ import annotations

import uuid

import pytest

from tests.factories import server_body
from tests.registry.harness import Api, new_user

pytestmark = pytest.mark.integration


def _threshold(**kw: object) -> dict[str, object]:
    return {
        "name": f"cpu-{uuid.uuid4().hex[:6]}",
        "kind": "threshold",
        "metric": "cpu_usage",
        "stat": "avg",
        "op": ">",
        "value": 90,
        "for_seconds": 30,
        **kw,
    }


def test_rule_crud_and_roles(api: Api, admin_token: str) -> None:
    _, _, user_token = new_user(api, admin_token)
    server = api.request("POST", "/servers", admin_token, json=server_body()).json()

    r = api.request("POST", "/alerts/rules", admin_token, json=_threshold(servers=[server["id"]]))
    assert r.status_code == 201, r.text
    rule = r.json()
    assert rule["revision"] == 1 and rule["servers"] == [server["id"]]

    # Users read, never write.
    r = api.request("GET", "/alerts/rules", user_token)
    assert r.status_code == 200 and rule["id"] in {x["id"] for x in r.json()}
    assert api.request("GET", f"/alerts/rules/{rule['id']}", user_token).json() == rule
    r = api.request("POST", "/alerts/rules", user_token, json=_threshold())
    assert r.status_code == 403 and "alerts:manage" in r.json()["detail"]
    assert api.request("DELETE", f"/alerts/rules/{rule['id']}", user_token).status_code == 403

    # A replace grows the revision.
    r = api.request("PUT", f"/alerts/rules/{rule['id']}", admin_token, json=_threshold(value=95))
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == 2 and r.json()["value"] == 95 and r.json()["servers"] is None

    absence = {"name": "gone", "kind": "absence", "for_seconds": 60}
    r = api.request("POST", "/alerts/rules", admin_token, json=absence)
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "absence" and r.json()["metric"] is None

    assert api.request("DELETE", f"/alerts/rules/{rule['id']}", admin_token).status_code == 204
    assert api.request("GET", f"/alerts/rules/{rule['id']}", admin_token).status_code == 404
    assert api.request("DELETE", f"/alerts/rules/{rule['id']}", admin_token).status_code == 404

    for path in ("/alerts", "/alerts/history", f"/alerts/history?server_id={server['id']}"):
        r = api.request("GET", path, user_token)
        assert r.status_code == 200, (path, r.text)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_threshold(metric=None), "metric"),
        (_threshold(op="=>"), "op"),
        (_threshold(value=101), "value"),
        (_threshold(stat="p99"), "stat"),  # 5 s windows have no percentiles
        (_threshold(for_seconds=-1), "for_seconds"),
        (_threshold(severity="loud"), "severity"),
        (_threshold(servers=[]), "servers"),
        (_threshold(servers=["not-a-uuid"]), "servers"),
        (_threshold(colour="red"), "colour"),
        ({"name": "x", "kind": "absence", "for_seconds": 0}, "for_seconds"),
        ({"name": "x", "kind": "absence", "for_seconds": 5, "op": ">"}, "op"),
        ({"kind": "absence", "for_seconds": 5}, "name"),
    ],
)
def test_invalid_rules_are_422_naming_the_field(
    api: Api, admin_token: str, body: dict[str, object], field: str
) -> None:
    r = api.request("POST", "/alerts/rules", admin_token, json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_unknown_servers_and_rules_are_refused(api: Api, admin_token: str) -> None:
    r = api.request(
        "POST", "/alerts/rules", admin_token, json=_threshold(servers=[str(uuid.uuid4())])
    )
    assert r.status_code == 422 and r.json()["detail"].startswith("servers:")
    r = api.request("PUT", "/alerts/rules/999999999", admin_token, json=_threshold())
    assert r.status_code == 404
    r = api.request("GET", "/alerts/rules/0", admin_token)
    assert r.status_code in (404, 422)
