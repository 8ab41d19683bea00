"""No response carries a password, a password hash, a token hash, an encrypted password or a
key, and no log line carries those or a token. Checked over every response and log line the
session has seen so far, after a run through the paths most likely to leak (validation errors,
duplicates, refusals, logins)."""

from __future__ import annotations

import base64
import uuid

import pytest

from tests.factories import ADMIN_EMAIL, ADMIN_PASSWORD, KEY_1, server_body
from tests.registry.harness import Api, Recorder, new_user

pytestmark = pytest.mark.integration


def test_no_secret_in_any_response_or_log_line(
    api: Api, admin_token: str, log_recorder: Recorder
) -> None:
    user, user_password, user_token = new_user(api, admin_token)
    ssh = f"ssh-secret-{uuid.uuid4().hex}"
    new_ssh = f"ssh-secret-{uuid.uuid4().hex}"
    body = server_body(password=ssh)
    server = api.request("POST", "/servers", admin_token, json=body).json()
    sid = server["id"]
    # Paths where a framework would echo input: validation errors, conflicts, refusals.
    api.request("POST", "/servers", admin_token, json=server_body(password=ssh, port="x"))
    api.request("POST", "/servers", admin_token, json={**body, "password": ssh})  # 409
    api.request("POST", "/servers", admin_token, json=server_body(password=ssh, extra=ssh))
    api.request("POST", "/servers", user_token, json=server_body(password=ssh))  # 403
    api.request("PATCH", f"/servers/{sid}", admin_token, json={"password": new_ssh})
    api.request("PATCH", f"/servers/{sid}", admin_token, json={"password": [new_ssh]})
    api.request("POST", "/login", json={"email": user["email"], "password": user_password * 200})
    api.request("POST", "/login", json={"email": user["email"], "password": user_password + "x"})
    api.request("POST", "/login", json={"email": ADMIN_EMAIL, "password": {"p": ADMIN_PASSWORD}})
    api.request(
        "POST",
        "/users",
        admin_token,
        json={"email": user["email"], "name": "dup", "password": user_password},
    )
    api.request(
        "PATCH",
        "/users/me/password",
        user_token,
        json={"current_password": user_password, "new_password": [user_password]},
    )
    api.request(
        "PATCH",
        "/users/me/password",
        user_token,
        json={"current_password": user_password + "x", "new_password": user_password},
    )
    api.request("GET", "/users/me", user_token + "x")
    api.request("GET", f"/servers/{sid}", user_token)
    api.request("GET", "/servers", user_token)

    secrets = {ssh, new_ssh, user_password, ADMIN_PASSWORD}
    secrets.add(base64.b64encode(KEY_1).decode())
    secrets |= {r["password_hash"] for r in api.sql("SELECT password_hash FROM users")}
    secrets |= {r["encrypted_password"] for r in api.sql("SELECT encrypted_password FROM servers")}
    secrets |= {bytes(r["token_hash"]).hex() for r in api.sql("SELECT token_hash FROM sessions")}
    # Argon2 hashes share their parameter prefix; compare their salt+digest part.
    secrets = {s.rsplit("$", 2)[-2] + "$" if s.startswith("$argon2") else s for s in secrets}

    # A token is in its login response, by design, and nowhere else: never in a log line.
    tokens = {admin_token, user_token}

    assert len(api.seen) > 15 and any("uvicorn.access" in line for line in log_recorder.lines)
    for where, texts, hidden in (
        ("response", api.seen, secrets),
        ("log", log_recorder.lines, secrets | tokens),
    ):
        for text in texts:
            leaked = [s[:12] + "…" for s in hidden if s in text]
            assert not leaked, f"{where} carries a secret ({leaked}): {text[:300]}"
