"""Integration: POST /login and /logout over HTTP (`registry/api/routes/login.py`): a bearer
token kept only as its hash, expiry, rehash on login, lockout after repeated failures, only
e-mail logins; logout ends the session at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher

from registry.security import DEFAULT_HASHER, token_hash
from tests.factories import ADMIN_EMAIL, unique
from tests.registry.harness import Api, new_user

pytestmark = pytest.mark.integration


def test_a_login_answers_a_bearer_token_and_its_expiry(api: Api, admin_token: str) -> None:
    user, password, _ = new_user(api, admin_token)
    r = api.request("POST", "/login", json={"email": user["email"].upper(), "password": password})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_at"}
    assert body["token_type"] == "bearer" and len(body["access_token"]) >= 43
    expires = datetime.fromisoformat(body["expires_at"])
    ttl = timedelta(hours=api.settings.session_hours)
    assert abs(expires - datetime.now(UTC) - ttl) < timedelta(minutes=1)
    r = api.request("GET", "/users/me", body["access_token"])
    assert r.status_code == 200 and r.json()["id"] == user["id"]
    # Each login is a session of its own.
    assert api.login(user["email"], password) != body["access_token"]
    r = api.request("POST", "/login", json={"email": user["email"], "password": "not-it"})
    assert r.status_code == 401
    assert r.json() == {"detail": "wrong e-mail or password, or the account is deactivated"}


def test_sessions_are_stored_as_hashes_and_expire(api: Api, admin_token: str) -> None:
    user, _, token = new_user(api, admin_token)
    rows = api.sql(
        "SELECT token_hash, expires_at - created_at AS ttl FROM sessions WHERE user_id = $1",
        user["id"],
    )
    assert [bytes(r["token_hash"]) for r in rows] == [token_hash(token)]
    assert rows[0]["ttl"] == timedelta(hours=api.settings.session_hours)
    assert not api.sql("SELECT 1 FROM sessions WHERE token_hash = $1", token.encode())


def test_logout_ends_the_session(api: Api, admin_token: str) -> None:
    _, _, token = new_user(api, admin_token)
    assert api.request("POST", "/logout", token).status_code == 204
    assert api.request("GET", "/users/me", token).status_code == 401
    assert api.request("POST", "/logout", token).status_code == 401


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
