"""Integration: /users over HTTP (`registry/api/routes/users.py`): admins create, list, read,
change and delete users; everyone sees their own account and changes their own password;
duplicates and an admin locking themselves out are refused."""

from __future__ import annotations

import pytest

from tests.registry.harness import Api, new_user

pytestmark = pytest.mark.integration


def test_everyone_reads_their_own_account_without_its_password(api: Api, admin_token: str) -> None:
    user, _, token = new_user(api, admin_token)
    assert user["role"] == "user" and user["provider"] == "email" and user["active"] is True
    assert "password" not in user and "password_hash" not in user
    r = api.request("GET", "/users/me", token)
    assert r.status_code == 200
    me = r.json()
    assert me["email"] == user["email"] and me["last_login_at"] is not None
    assert {k: v for k, v in me.items() if k != "last_login_at"} == {
        k: v for k, v in user.items() if k != "last_login_at"
    }


def test_an_admin_reads_a_user_and_lists_them_a_page_at_a_time(api: Api, admin_token: str) -> None:
    user, _, token = new_user(api, admin_token)
    r = api.request("GET", f"/users/{user['id']}", admin_token)
    assert r.status_code == 200 and r.json() == api.request("GET", "/users/me", token).json()
    first = api.request("GET", "/users", admin_token, params={"limit": 1}).json()
    assert len(first["data"]) == 1 and first["count"] >= 2
    second = api.request("GET", "/users", admin_token, params={"skip": 1, "limit": 1}).json()
    assert second["count"] == first["count"] and second["data"] != first["data"]
    everyone = api.request("GET", "/users", admin_token, params={"limit": 1000}).json()
    assert len(everyone["data"]) == min(everyone["count"], 1000)
    assert everyone["data"][:2] == first["data"] + second["data"]  # in creation order
    for bad in ({"limit": 0}, {"limit": 1001}, {"skip": -1}):
        r = api.request("GET", "/users", admin_token, params=bad)
        assert r.status_code == 422 and next(iter(bad)) in r.json()["detail"]


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
