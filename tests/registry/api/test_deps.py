"""The routes' dependencies: the caller's session from the bearer token (401 when missing,
wrong or expired). RBAC: every route declares one permission (`Requires`); the matrix of roles
by routes holds over HTTP."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.routing import APIRoute
from pydantic import SecretStr

from registry.api.deps import Requires
from registry.api.main import ROUTERS
from registry.app import create_app
from registry.crypto import Keyring
from registry.permissions import ROLE_PERMISSIONS, Permission, Role
from registry.security import token_hash
from registry.settings import RegistrySettings
from tests.registry.harness import Api, new_user

PUBLIC = {("POST", "/login"), ("GET", "/health")}
#: What the issue asks for, spelled out: users read servers and metrics and see themselves.
USER_MAY = {
    ("GET", "/users/me"),
    ("PATCH", "/users/me/password"),
    ("POST", "/logout"),
    ("GET", "/servers"),
    ("GET", "/servers/{server_id}"),
    ("GET", "/servers/{server_id}/metrics"),
    ("GET", "/servers/{server_id}/chart"),
}


def _permissions(dependant: Any) -> list[Permission]:
    found = []
    for dep in dependant.dependencies:
        if isinstance(dep.call, Requires):
            found.append(dep.call.permission)
        found += _permissions(dep)
    return found


def route_table() -> dict[tuple[str, str], Permission | None]:
    """(method, path) → the permission the route declares (None: public)."""
    table: dict[tuple[str, str], Permission | None] = {}
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            perms = _permissions(route.dependant)
            for method in route.methods or ():
                key = (method, route.path)
                assert len(perms) <= 1, f"{key} declares {perms}"
                table[key] = perms[0] if perms else None
    return table


def test_every_route_declares_one_permission_or_is_public() -> None:
    table = route_table()
    assert {k for k, p in table.items() if p is None} == PUBLIC
    # The walk sees every operation the app serves.
    app = create_app(RegistrySettings(registry_keys=SecretStr("")), Keyring({1: bytes(32)}))
    served = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert served == set(table)


def test_the_role_table_is_what_the_issue_asks() -> None:
    table = route_table()
    assert ROLE_PERMISSIONS[Role.ADMIN] == frozenset(Permission)
    user_may = {k for k, p in table.items() if p is not None and p in ROLE_PERMISSIONS[Role.USER]}
    assert user_may == USER_MAY


@pytest.mark.integration
def test_the_matrix_of_roles_and_routes(api: Api, admin_token: str) -> None:
    table = route_table()
    callers: dict[str, str | None] = {
        "admin": new_user(api, admin_token, "admin")[2],
        "user": new_user(api, admin_token, "user")[2],
        "anonymous": None,
    }
    # Logging out last: it ends the caller's session.
    routes = sorted((k for k in table if k not in PUBLIC), key=lambda k: k[1] == "/logout")
    checked = 0
    for method, path in routes:
        url = path.replace("{server_id}", str(uuid.uuid4())).replace("{user_id}", str(uuid.uuid4()))
        permission = table[(method, path)]
        assert permission is not None
        for who, token in callers.items():
            body: dict[str, Any] = {"json": {}} if method in ("POST", "PATCH") else {}
            r = api.request(method, url, token, **body)
            if who == "anonymous":
                expected = "401"
                ok = r.status_code == 401
            elif permission in ROLE_PERMISSIONS[Role(who)]:
                expected = "allowed"
                ok = r.status_code not in (401, 403) and r.status_code < 500
            else:
                expected = "403"
                ok = r.status_code == 403
            assert ok, f"{who} {method} {path}: expected {expected}, got {r.status_code} {r.text}"
            checked += 1
    assert checked == 3 * len(routes)


@pytest.mark.integration
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
