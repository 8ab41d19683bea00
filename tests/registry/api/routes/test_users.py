"""Integration: /users over HTTP (`registry/api/routes/users.py`): admins create, list, read,
change and delete users; everyone sees their own account and changes their own password;
duplicates and an admin locking themselves out are refused."""

from __future__ import annotations

import pytest

from tests.registry.harness import Api, new_user

pytestmark = pytest.mark.integration


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
