"""Integration: the registry application itself over HTTP against the real PostgreSQL: odd or
huge requests answered with a 4xx (never a 500), the database reached over verified TLS, the
docs and /metrics served. The routes have their own tests in `tests/registry/api/routes/`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.registry.harness import Api

pytestmark = pytest.mark.integration


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
