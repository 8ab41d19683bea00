"""Integration: the registry's public GET /health (`registry/api/routes/health.py`): 200 `ok`
with the database up; 200 `degraded` while the status consumer cannot reach Kafka (the API
still serves) and `ok` again once it can; 503 while the database cannot be reached, 200 again
when it is back. Dependencies are cut through a relay (tests/e2e/relay.py)."""

from __future__ import annotations

import asyncio

import pytest

from infra.settings import StackSettings
from infra.stack.process import free_port
from registry.crypto import Keyring
from registry.status import TELEMETRY
from runtime.settings import KafkaSettings
from runtime.topics import create_topics
from schemas.topics import TopicSpec
from tests.factories import KEY_1, registry_settings, unique
from tests.registry.harness import Api, RelayThread, ServerThread, wait_for_health

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_reported_dependencies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's dependency trackers are the process's (every server in it reports to
    them); each test starts with none reported, and the session's come back after it."""
    monkeypatch.setattr(TELEMETRY, "dependencies", {})


def test_health_is_public_and_ok_while_the_database_answers(api: Api) -> None:
    r = api.request("GET", "/health")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"status", "component", "uptime_s", "dependencies"}
    assert (body["status"], body["component"]) == ("ok", "registry")
    # This server runs no status consumer: the database is its one dependency.
    assert body["dependencies"] == {"postgres": "up"}
    assert isinstance(body["uptime_s"], float) and body["uptime_s"] >= 0


def test_degraded_while_the_status_consumer_cannot_reach_kafka(
    stack_settings: StackSettings, registry_db: str, admin_token: str
) -> None:
    topic = TopicSpec(name=f"test.{unique('status')}", partitions=1, retention_ms=3_600_000)
    asyncio.run(
        create_topics(KafkaSettings(kafka_bootstrap=stack_settings.kafka_bootstrap), [topic])
    )
    # The broker's proxied listener advertises the relay's port: every connection of the
    # consumer goes through the relay, which is down at first.
    settings = registry_settings(
        stack_settings,
        registry_db,
        registry_consume_status=True,
        kafka_bootstrap=f"127.0.0.1:{stack_settings.kafka_proxy_port}",
        status_topic=topic.name,
        registry_group=unique("test-registry"),
        retry_max=0.5,
    )
    with (
        RelayThread(
            stack_settings.kafka_proxy_port, stack_settings.kafka_proxied_port, started=False
        ) as relay,
        ServerThread(settings, Keyring({1: KEY_1})) as server,
    ):
        r = wait_for_health(server, lambda r: r.json()["status"] != "ok")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "degraded" and body["dependencies"]["postgres"] == "up"
        assert body["dependencies"]["kafka"].startswith("down for "), body
        assert "failed attempts" in body["dependencies"]["kafka"]
        # The API itself still serves (sessions are in the database this server shares).
        auth = {"Authorization": f"Bearer {admin_token}"}
        assert server.get("/servers", headers=auth).status_code == 200

        relay.restore()
        r = wait_for_health(server, lambda r: r.json()["status"] == "ok")
        assert r.status_code == 200
        assert r.json()["dependencies"] == {"kafka": "up", "postgres": "up"}, r.text


def test_503_while_the_database_cannot_be_reached_and_200_when_it_is_back(
    stack_settings: StackSettings, registry_db: str
) -> None:
    port = free_port()
    settings = registry_settings(stack_settings, registry_db, pg_port=port)
    with (
        RelayThread(port, stack_settings.pg_port) as relay,
        ServerThread(settings, Keyring({1: KEY_1})) as server,
    ):
        assert server.get("/health").json()["status"] == "ok"
        relay.cut()
        r = wait_for_health(server, lambda r: r.status_code != 200)
        assert r.status_code == 503
        assert r.json() == {"detail": "database unavailable; try again"}
        relay.restore()
        r = wait_for_health(server, lambda r: r.status_code == 200)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert r.json()["dependencies"] == {"postgres": "up"}
