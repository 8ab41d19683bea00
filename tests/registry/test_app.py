"""Integration: the registry application itself over HTTPS against the real PostgreSQL: each
refusal's status, odd or huge requests answered with a 4xx (never a 500), the database reached
over verified TLS, the docs and /metrics served, the security headers on every answer. The
routes have their own tests in `tests/registry/api/routes/`."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from registry.api.docs import SCRIPT_URL, STYLE_URL
from registry.app import REFUSALS
from registry.errors import (
    Conflict,
    Forbidden,
    Invalid,
    LockedOut,
    NotFound,
    RegistryError,
    Unauthenticated,
    WrongPassword,
)
from registry.headers import POLICY, source_hash
from tests.factories import server_body
from tests.registry.harness import Api, new_user

pytestmark = pytest.mark.integration


def test_each_refusal_gets_its_status_and_only_its_message(api: Api, admin_token: str) -> None:
    user, password, user_token = new_user(api, admin_token)
    server = api.request("POST", "/servers", admin_token, json=server_body()).json()
    duplicate = server_body(hostname=server["hostname"])
    wrong_current = {"current_password": "not-it", "new_password": "long-enough"}
    # refusal: (status, method, path, token, body, detail)
    cases: dict[type[RegistryError], tuple[int, str, str, str, object, str]] = {
        NotFound: (404, "GET", f"/users/{uuid.uuid4()}", admin_token, None, "user not found"),
        Conflict: (
            409,
            "POST",
            "/servers",
            admin_token,
            duplicate,
            "hostname: a server with this hostname exists",
        ),
        Forbidden: (
            403,
            "GET",
            "/users",
            user_token,
            None,
            "forbidden: needs permission users:manage",
        ),
        Invalid: (
            422,
            "PATCH",
            f"/servers/{server['id']}",
            admin_token,
            {"hostname": None},
            "hostname: may not be null",
        ),
        Unauthenticated: (401, "GET", "/servers", "not-a-token", None, "invalid or expired token"),
        WrongPassword: (
            400,
            "PATCH",
            "/users/me/password",
            user_token,
            wrong_current,
            "current_password: not the current password",
        ),
    }
    for refusal, (code, method, path, token, body, detail) in cases.items():
        assert REFUSALS[refusal] == code, refusal
        r = api.request(method, path, token, json=body)
        assert (r.status_code, r.json()) == (code, {"detail": detail}), refusal
        challenge = r.headers.get("www-authenticate")
        assert challenge == ("Bearer" if refusal is Unauthenticated else None), refusal

    # A locked e-mail: 429 with the whole seconds left, even for the right password.
    api.sql(
        "INSERT INTO login_failures (email, failures, first_failed_at, locked_until) "
        "VALUES ($1, 5, now(), now() + interval '90 seconds')",
        user["email"],
    )
    r = api.request("POST", "/login", json={"email": user["email"], "password": password})
    assert r.status_code == REFUSALS[LockedOut] == 429
    assert r.json() == {"detail": "too many failed logins for this e-mail; try again later"}
    assert 85 <= int(r.headers["retry-after"]) <= 91
    assert set(REFUSALS) == set(cases) | {LockedOut}


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
    # The registry's own pool too (it keeps a connection open), not only this test's.
    assert api.request("GET", "/health").status_code == 200
    others = api.sql(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
    )
    assert others and all(r["ssl"] for r in others)


def test_openapi_docs_and_prometheus_metrics_are_served(api: Api) -> None:
    assert api.request("GET", "/docs").status_code == 200
    assert "/servers/{server_id}/metrics" in api.request("GET", "/openapi.json").json()["paths"]
    assert "fleetpulse_registry_received_total" in api.request("GET", "/metrics/").text


def test_every_answer_carries_the_security_headers(api: Api, admin_token: str) -> None:
    answers = {
        "health": api.request("GET", "/health"),
        "json": api.request("GET", "/servers", admin_token),
        "401": api.request("GET", "/servers"),
        "404": api.request("GET", "/no-such-route"),
        "405": api.request("DELETE", "/health"),
        "413": api.request(
            "POST",
            "/servers",
            admin_token,
            content=b"x" * (2 << 20),
            headers={"Content-Type": "application/json"},
        ),
        "422": api.request("POST", "/login", json={}),
        "openapi": api.request("GET", "/openapi.json"),
        "prometheus": api.request("GET", "/metrics/"),
    }
    for name, r in answers.items():
        assert r.headers["x-content-type-options"] == "nosniff", name
        assert r.headers["x-frame-options"] == "DENY", name
        assert r.headers["referrer-policy"] == "no-referrer", name
        assert r.headers["strict-transport-security"] == "max-age=31536000", name
        assert r.headers.get_list("content-security-policy") == [POLICY], name
    assert answers["413"].status_code == 413 and answers["405"].status_code == 405


def test_the_docs_page_allows_exactly_what_it_loads(api: Api) -> None:
    r = api.request("GET", "/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    (policy,) = r.headers.get_list("content-security-policy")
    directives = dict(d.split(" ", 1) for d in policy.split("; "))
    # Every inline script of the page by its hash, the two files from the CDN, nothing else.
    inline = re.findall(r"<script>(.*?)</script>", r.text, re.DOTALL)
    assert len(inline) == 1
    assert directives["script-src"] == f"https://cdn.jsdelivr.net {source_hash(inline[0])}"
    assert re.findall(r'<script src="([^"]+)"', r.text) == [SCRIPT_URL]
    assert STYLE_URL in r.text and directives["style-src"].startswith("https://cdn.jsdelivr.net ")
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"  # /openapi.json and "Try it out"
    assert directives["frame-ancestors"] == "'none'"
    assert "validator.swagger.io" not in policy and '"validatorUrl": null' in r.text
    assert r.headers["x-frame-options"] == "DENY"
    # ReDoc and the OAuth2 redirect page are not served.
    assert api.request("GET", "/redoc").status_code == 404
    assert api.request("GET", "/docs/oauth2-redirect").status_code == 404
