"""Integration: the registry over HTTP against the real PostgreSQL, as a new user would use it
with curl."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from argon2 import PasswordHasher

from registry import store
from registry.crypto import Keyring
from registry.security import DEFAULT_HASHER, token_hash
from tests.factories import ADMIN_EMAIL, KEY_1, server_body, unique
from tests.registry.harness import Api, new_user

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


def test_wrong_missing_and_expired_tokens_get_401(api: Api, admin_token: str) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        r = api.request("GET", "/servers", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
    _, _, token = new_user(api, admin_token)
    assert api.request("GET", "/servers", token).status_code == 200
    api.sql(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
        token_hash(token),
    )
    r = api.request("GET", "/servers", token)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_sessions_are_stored_as_hashes_and_expire(api: Api, admin_token: str) -> None:
    user, _, token = new_user(api, admin_token)
    rows = api.sql(
        "SELECT token_hash, expires_at - created_at AS ttl FROM sessions WHERE user_id = $1",
        user["id"],
    )
    assert [bytes(r["token_hash"]) for r in rows] == [token_hash(token)]
    assert rows[0]["ttl"] == timedelta(hours=api.settings.session_hours)
    assert not api.sql("SELECT 1 FROM sessions WHERE token_hash = $1", token.encode())


def test_expired_sessions_and_stale_counts_are_purged(api: Api, admin_token: str) -> None:
    # The server purged at start; whatever expires later goes at the next round.
    user, _, token = new_user(api, admin_token)
    api.sql("UPDATE sessions SET expires_at = now() WHERE token_hash = $1", token_hash(token))
    stale, fresh = f"{unique('stale')}@x.y", f"{unique('fresh')}@x.y"
    api.sql(
        "INSERT INTO login_failures (email, failures, first_failed_at) VALUES "
        "($1, 3, now() - interval '1 day'), ($2, 3, now())",
        stale,
        fresh,
    )

    async def purge() -> tuple[int, int]:
        conn = await asyncpg.connect(**api.settings.connect_kwargs())
        try:
            return await store.purge_expired(conn, api.settings.login_window)
        finally:
            await conn.close()

    sessions, failures = asyncio.run(purge())
    assert sessions >= 1 and failures >= 1
    assert not api.sql("SELECT 1 FROM sessions WHERE user_id = $1", user["id"])
    left = {r["email"] for r in api.sql("SELECT email FROM login_failures")}
    assert fresh in left and stale not in left


def test_logout_ends_the_session(api: Api, admin_token: str) -> None:
    _, _, token = new_user(api, admin_token)
    assert api.request("POST", "/logout", token).status_code == 204
    assert api.request("GET", "/users/me", token).status_code == 401
    assert api.request("POST", "/logout", token).status_code == 401


def test_deactivating_a_user_ends_their_sessions(api: Api, admin_token: str) -> None:
    user, password, token = new_user(api, admin_token)
    r = api.request("PATCH", f"/users/{user['id']}", admin_token, json={"active": False})
    assert r.status_code == 200 and r.json()["active"] is False
    assert api.request("GET", "/servers", token).status_code == 401
    assert not api.sql("SELECT 1 FROM sessions WHERE user_id = $1", user["id"])
    r = api.request("POST", "/login", json={"email": user["email"], "password": password})
    assert r.status_code == 401
    r = api.request("PATCH", f"/users/{user['id']}", admin_token, json={"active": True})
    assert api.login(user["email"], password)


def test_users_change_their_own_password(api: Api, admin_token: str) -> None:
    user, password, token = new_user(api, admin_token)
    url = "/users/me/password"
    r = api.request("PATCH", url, token, json={"current_password": "nope", "new_password": "x" * 8})
    assert r.status_code == 400 and r.json()["detail"].startswith("current_password")
    r = api.request("PATCH", url, token, json={"current_password": password, "new_password": "1"})
    assert r.status_code == 422 and "new_password" in r.json()["detail"]
    r = api.request(
        "PATCH", url, token, json={"current_password": password, "new_password": "brand-new-pw"}
    )
    assert r.status_code == 200
    assert api.request("GET", "/users/me", token).status_code == 401
    assert api.login(user["email"], "brand-new-pw")
    r = api.request("POST", "/login", json={"email": user["email"], "password": password})
    assert r.status_code == 401


def test_admin_cannot_lock_themselves_out(api: Api, admin_token: str) -> None:
    me = api.request("GET", "/users/me", admin_token).json()
    for body in ({"active": False}, {"role": "user"}):
        r = api.request("PATCH", f"/users/{me['id']}", admin_token, json=body)
        assert r.status_code == 409
    assert api.request("DELETE", f"/users/{me['id']}", admin_token).status_code == 409


def test_user_crud_and_duplicates(api: Api, admin_token: str) -> None:
    user, _, _ = new_user(api, admin_token)
    r = api.request(
        "POST",
        "/users",
        admin_token,
        json={"email": user["email"].upper(), "name": "Again", "password": "long-enough"},
    )
    assert r.status_code == 409 and r.json()["detail"].startswith("email:")
    r = api.request("PATCH", f"/users/{user['id']}", admin_token, json={"name": "Renamed"})
    assert r.status_code == 200 and r.json()["name"] == "Renamed"
    r = api.request("GET", "/users", admin_token, params={"limit": 1000})
    assert user["id"] in {u["id"] for u in r.json()["data"]}
    # A new password works and ends the old sessions.
    r = api.request("PATCH", f"/users/{user['id']}", admin_token, json={"password": "new-pass-123"})
    assert r.status_code == 200
    assert api.login(user["email"], "new-pass-123")
    assert api.request("DELETE", f"/users/{user['id']}", admin_token).status_code == 204
    assert api.request("GET", f"/users/{user['id']}", admin_token).status_code == 404
    assert api.request("DELETE", f"/users/{user['id']}", admin_token).status_code == 404


def test_passwords_are_argon2id_and_rehashed_when_parameters_change(
    api: Api, admin_token: str
) -> None:
    user, password, _ = new_user(api, admin_token)
    (row,) = api.sql("SELECT password_hash FROM users WHERE id = $1", user["id"])
    assert row["password_hash"].startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(password)
    api.sql("UPDATE users SET password_hash = $2 WHERE id = $1", user["id"], weak)
    api.login(user["email"], password)
    (row,) = api.sql("SELECT password_hash, last_login_at FROM users WHERE id = $1", user["id"])
    assert row["password_hash"] != weak
    assert not DEFAULT_HASHER.check_needs_rehash(row["password_hash"])
    assert DEFAULT_HASHER.verify(row["password_hash"], password)
    assert datetime.now(UTC) - row["last_login_at"] < timedelta(minutes=1)


def test_repeated_failures_lock_the_email_for_a_while(api: Api, admin_token: str) -> None:
    user, password, _ = new_user(api, admin_token)
    limit = api.settings.login_max_failures
    for _ in range(limit):
        r = api.request("POST", "/login", json={"email": user["email"], "password": "wrong-one"})
        assert r.status_code == 401
    r = api.request("POST", "/login", json={"email": user["email"], "password": password})
    assert r.status_code == 429
    assert 0 < int(r.headers["retry-after"]) <= api.settings.login_lockout + 1
    # An unknown address is counted the same way (no hint whether it exists).
    ghost = f"{unique('ghost')}@example.com"
    codes = [
        api.request("POST", "/login", json={"email": ghost, "password": "x"}).status_code
        for _ in range(limit + 1)
    ]
    assert codes == [401] * limit + [429]
    # When the lock has run out, the right password works and clears the count.
    api.sql(
        "UPDATE login_failures SET locked_until = now(), first_failed_at = now() - "
        "interval '1 day' WHERE email = $1",
        user["email"],
    )
    assert api.login(user["email"], password)
    assert not api.sql("SELECT 1 FROM login_failures WHERE email = $1", user["email"])


def test_only_email_logins_exist(api: Api) -> None:
    r = api.request(
        "POST", "/login", json={"email": ADMIN_EMAIL, "password": "x", "provider": "github"}
    )
    assert r.status_code == 422 and "provider" in r.json()["detail"]
    schema = api.request("GET", "/openapi.json").json()["components"]["schemas"]
    provider = schema["LoginRequest"]["properties"]["provider"]
    assert provider["const"] == "email" and "Only `email`" in provider["description"]


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


def test_odd_requests_never_get_a_500(api: Api, admin_token: str) -> None:
    sql = "1' OR '1'='1"
    cases = [
        ("GET", f"/servers/{sql}", None),
        ("GET", "/servers/../../etc/passwd", None),
        ("GET", "/users/" + "9" * 5000, None),
        ("GET", "/servers?skip=-1", None),
        ("GET", "/servers?limit=99999999999999999999999", None),
        ("POST", "/servers", b"{not json"),
        ("POST", "/servers", b"[]"),
        ("POST", "/servers", b'"' + b"a" * 1_000_000 + b'"'),
        ("POST", "/users", b'{"email": {"$ne": null}, "name": 1, "password": []}'),
        ("PATCH", f"/users/{uuid.uuid4()}", b'{"role": "superadmin"}'),
        ("GET", f"/servers/{uuid.uuid4()}/metrics?from=yesterday", None),
    ]
    for method, path, content in cases:
        r = api.request(
            method,
            path,
            admin_token,
            content=content,
            headers={"Content-Type": "application/json"},
        )
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:200])
    r = api.request("POST", "/login", json={"email": "' OR 1=1 --", "password": "' OR 1=1 --"})
    assert r.status_code == 401
    for email in ("nul\\u0000@x.y", "\\ud800@x.y"):
        r = api.request(
            "POST",
            "/login",
            content=f'{{"email": "{email}", "password": "{email}"}}',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 422 and "email" in r.json()["detail"], r.text
    assert api.request("GET", "/servers", "x" * 4000).status_code == 401


def test_a_huge_body_is_refused_before_it_is_read(api: Api, admin_token: str) -> None:
    huge = b'{"name": "' + b"x" * (2 << 20) + b'"}'
    headers = {"Content-Type": "application/json"}
    r = api.request("POST", "/servers", admin_token, content=huge, headers=headers)
    assert r.status_code == 413 and "over 1048576 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"name": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = api.request("POST", "/servers", admin_token, content=chunks(), headers=headers)
    assert r.status_code == 413, r.text


def test_the_database_connection_is_tls_verified(api: Api) -> None:
    assert api.settings.pg_sslmode == "verify-full"
    (row,) = api.sql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert row["ssl"] is True
    r = api.request("GET", "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["component"] == "registry" and r.json()["dependencies"]["postgres"] == "up"


def test_openapi_docs_and_prometheus_metrics_are_served(api: Api) -> None:
    assert api.request("GET", "/docs").status_code == 200
    assert "/servers/{server_id}/metrics" in api.request("GET", "/openapi.json").json()["paths"]
    assert "fleetpulse_registry_received_total" in api.request("GET", "/metrics/").text
