"""Integration: /servers over HTTP (`registry/api/routes/servers.py`): everyone reads the
inventory, admins change it; duplicates are 409, bad input a 422 naming the field; the SSH
password is stored encrypted and never answered."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from registry.crypto import Keyring
from tests.factories import KEY_1, server_body
from tests.registry.harness import Api, add_snapshot, new_user

pytestmark = pytest.mark.integration


def test_the_curl_walkthrough(api: Api, admin_token: str) -> None:
    # An admin creates a user and a server.
    user, _, user_token = new_user(api, admin_token)
    assert user["role"] == "user" and user["provider"] == "email"
    assert "password" not in user and "password_hash" not in user
    body = server_body()
    r = api.request("POST", "/servers", admin_token, json=body)
    assert r.status_code == 201, r.text
    server = r.json()
    assert server["hostname"] == body["hostname"] and server["is_online"] is False
    assert not {"password", "encrypted_password"} & set(server)

    # The user lists and reads servers, never sees a password, cannot create one.
    r = api.request("GET", "/servers", user_token)
    assert r.status_code == 200
    assert server["id"] in {s["id"] for s in r.json()["data"]}
    assert body["password"] not in r.text and "encrypted" not in r.text
    r = api.request("GET", f"/servers/{server['id']}", user_token)
    assert r.status_code == 200 and r.json() == server
    r = api.request("POST", "/servers", user_token, json=server_body())
    assert r.status_code == 403 and "servers:manage" in r.json()["detail"]
    r = api.request("GET", "/users/me", user_token)
    assert r.status_code == 200 and r.json()["email"] == user["email"]
    assert r.json()["last_login_at"] is not None


def test_server_crud_duplicates_and_stored_ciphertext(api: Api, admin_token: str) -> None:
    body = server_body()
    server = api.request("POST", "/servers", admin_token, json=body).json()
    r = api.request("POST", "/servers", admin_token, json=server_body(hostname=body["hostname"]))
    assert r.status_code == 409 and r.json()["detail"].startswith("hostname:")
    r = api.request("POST", "/servers", admin_token, json=server_body(id=server["id"]))
    assert r.status_code == 409 and r.json()["detail"].startswith("id:")

    keyring = Keyring({1: KEY_1})
    (row,) = api.sql("SELECT encrypted_password FROM servers WHERE id = $1", server["id"])
    assert row["encrypted_password"].startswith("v1:")
    assert body["password"] not in row["encrypted_password"]
    assert keyring.decrypt(row["encrypted_password"], server["id"]) == body["password"]

    r = api.request(
        "PATCH",
        f"/servers/{server['id']}",
        admin_token,
        json={"port": 2222, "password": "new-pw-1"},
    )
    assert r.status_code == 200 and r.json()["port"] == 2222 and "password" not in r.json()
    (row,) = api.sql("SELECT encrypted_password FROM servers WHERE id = $1", server["id"])
    assert keyring.decrypt(row["encrypted_password"], server["id"]) == "new-pw-1"
    r = api.request("PATCH", f"/servers/{server['id']}", admin_token, json={"hostname": None})
    assert r.status_code == 422 and "hostname" in r.json()["detail"]

    assert api.request("DELETE", f"/servers/{server['id']}", admin_token).status_code == 204
    assert api.request("GET", f"/servers/{server['id']}", admin_token).status_code == 404
    assert api.request("PATCH", f"/servers/{server['id']}", admin_token, json={}).status_code == 404


def test_server_with_a_given_id(api: Api, admin_token: str) -> None:
    given = str(uuid.uuid4())
    r = api.request("POST", "/servers", admin_token, json=server_body(id=given))
    assert r.status_code == 201 and r.json()["id"] == given


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hostname": "h" * 256}, "hostname"),
        ({"name": "n" * 10_000}, "name"),
        ({"username": "u" * 256}, "username"),
        ({"port": "22"}, "port"),
        ({"port": 70000}, "port"),
        ({"port": 22.5}, "port"),
        ({"ip_address": "10.0.0.256"}, "ip_address"),
        ({"ip_address": "fe80::1%" + "e" * 60}, "ip_address"),
        ({"hostname": "x'; DROP TABLE servers; --"}, "hostname"),
        ({"name": "nul\x00byte"}, "name"),
        ({"name": "\ud800"}, "name"),
        ({"password": "p" * 2000}, "password"),
        ({"server_type": "solaris"}, "server_type"),
        ({"id": "not-a-uuid"}, "id"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_server_input_is_a_4xx_naming_the_field(
    api: Api, admin_token: str, body: dict[str, object], field: str
) -> None:
    # json.dumps escapes what httpx would refuse to send (a lone surrogate), as curl could send.
    content = json.dumps(server_body(**body))
    headers = {"Content-Type": "application/json"}
    r = api.request("POST", "/servers", admin_token, content=content, headers=headers)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]
    assert "p" * 2000 not in r.text


def test_servers_are_listed_by_hostname_a_page_at_a_time(api: Api, admin_token: str) -> None:
    for _ in range(2):
        assert api.request("POST", "/servers", admin_token, json=server_body()).status_code == 201
    first = api.request("GET", "/servers", admin_token, params={"limit": 1}).json()
    assert len(first["data"]) == 1 and first["count"] >= 2
    second = api.request("GET", "/servers", admin_token, params={"skip": 1, "limit": 1}).json()
    assert second["count"] == first["count"]
    both = api.request("GET", "/servers", admin_token, params={"limit": 2}).json()
    assert both["data"] == first["data"] + second["data"]  # one order, page after page
    for bad in ({"limit": 0}, {"limit": 1001}, {"skip": -1}):
        r = api.request("GET", "/servers", admin_token, params=bad)
        assert r.status_code == 422 and next(iter(bad)) in r.json()["detail"]


def test_deleting_a_server_removes_its_stored_metrics(api: Api, admin_token: str) -> None:
    server = api.request("POST", "/servers", admin_token, json=server_body()).json()
    add_snapshot(api, server["id"], datetime.now(UTC).replace(microsecond=0), 10.0)
    count = "SELECT count(*) AS n FROM metrics_snapshots WHERE server_id = $1"
    assert api.sql(count, server["id"])[0]["n"] == 1
    assert api.request("DELETE", f"/servers/{server['id']}", admin_token).status_code == 204
    assert api.sql(count, server["id"])[0]["n"] == 0
    assert api.request("DELETE", f"/servers/{server['id']}", admin_token).status_code == 404
