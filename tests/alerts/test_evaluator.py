"""Integration: `fleetpulse alerts` as its own process (its own database role), between the
real broker, the real PostgreSQL and the real Alertmanager, which notifies a local webhook
receiver. Every alert is followed to the receiver: fired after `for`, resolved, a p99 rule on
hourly windows, an absent host, kill -9 while pending and while firing with no duplicate
notification, and a rule edited while firing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from alerts import store
from alerts.rules import RuleSpec
from infra.settings import StackSettings
from infra.stack.monitoring import Alertmanager
from infra.stack.process import free_port
from runtime.settings import ALERTS_ROLE
from runtime.topics import create_topics
from schemas.messages import MetricStats, WindowAggregate
from schemas.resolutions import Resolution
from schemas.topics import TopicSpec
from tests.kafka import SECURITY

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


class Receiver:
    """A webhook receiver for Alertmanager: keeps every notification's alerts."""

    def __init__(self, fail_first: int = 0) -> None:
        self.notifications: list[dict[str, Any]] = []
        self.refused = 0
        received = self.notifications
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.refused < fail_first:  # a webhook that is down for a while
                    outer.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, alertname: str, status: str) -> list[dict[str, Any]]:
        return [
            a
            for n in self.notifications
            for a in n["alerts"]
            if a["labels"].get("alertname") == alertname and a["status"] == status
        ]


async def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.server.shutdown()


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: Receiver) -> Iterator[Alertmanager]:
    settings = StackSettings(
        home=tmp_path / "home",
        alertmanager_port=free_port(),
        alertmanager_webhook_url=receiver.url,
        alertmanager_group_wait=0.5,
        alertmanager_group_interval=1.0,
        alertmanager_repeat_interval=3600.0,
    )
    am = Alertmanager(settings)
    am.start()
    yield am
    am.stop()


@pytest.fixture
async def conn(app_conn: asyncpg.Connection) -> asyncpg.Connection:
    from infra.db import migrate

    await migrate(app_conn)
    return app_conn


@pytest.fixture
async def topics(stack_settings: StackSettings) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    names = {k: f"test-alerts-{k}-{tag}" for k in ("5s", "1h", "1d", "status", "alerts")}
    await create_topics(
        stack_settings, [TopicSpec(n, partitions=2, retention_ms=3_600_000) for n in names.values()]
    )
    return names


class Evaluator:
    """`fleetpulse alerts` in a process of its own."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        before = self.log.read_text().count("resumed:") if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
                [sys.executable, "-m", "infra.cli", "alerts"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        await wait_for(
            lambda: self.log.read_text().count("resumed:") > before, 60, "the evaluator to resume"
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
async def evaluator(
    stack_settings: StackSettings,
    fresh_database: str,
    conn: asyncpg.Connection,
    topics: dict[str, str],
    alertmanager: Alertmanager,
    webhook: Receiver,
    tmp_path: Path,
) -> AsyncIterator[Evaluator]:
    env = {
        **os.environ,
        "FLEETPULSE_PG_DATABASE": fresh_database,
        "FLEETPULSE_PG_USER": ALERTS_ROLE,
        "FLEETPULSE_AGG_TOPICS": json.dumps({k: topics[k] for k in ("5s", "1h", "1d")}),
        "FLEETPULSE_STATUS_TOPIC": topics["status"],
        "FLEETPULSE_ALERTS_TOPIC": topics["alerts"],
        "FLEETPULSE_ALERTS_GROUP": f"test-alerts-{uuid.uuid4().hex[:8]}",
        "FLEETPULSE_ALERTMANAGER_URL": alertmanager.url,
        "FLEETPULSE_ALERTS_WEBHOOK_URL": webhook.url,
        "FLEETPULSE_RETRY_MIN": "0.2",
        "FLEETPULSE_RETRY_MAX": "1",
        "FLEETPULSE_ALERTS_RESEND": "1",
        "FLEETPULSE_ALERTS_RULES_REFRESH": "0.5",
        "FLEETPULSE_ALERTS_TICK": "0.5",
        "FLEETPULSE_ALERTS_ABSENCE_GRACE": "1",
    }
    ev = Evaluator(env, tmp_path / "alerts.log")
    yield ev
    ev.stop()


async def add_server(conn: asyncpg.Connection) -> str:
    sid = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO servers (id, name, hostname, port, username, encrypted_password, "
        "is_online, last_seen_at) VALUES ($1, 'n', $2, 22, 'u', 'v1:x', true, now())",
        sid,
        f"h-{sid}",
    )
    return sid


def window(
    sid: str, start: datetime, cpu: float, resolution: Resolution = Resolution.FIVE_SECONDS
) -> bytes:
    seconds = 5 if resolution is Resolution.FIVE_SECONDS else 3600
    extra: dict[str, Any] = {}
    if resolution is not Resolution.FIVE_SECONDS:
        extra = {"p50": cpu / 2, "p90": cpu - 5, "p95": cpu - 2, "p99": cpu}
    stats = MetricStats(avg=cpu / 2, min=1.0, max=cpu, last=cpu, **extra)
    return WindowAggregate(
        server_id=sid,
        resolution=resolution,
        window_start=start,
        window_end=start + timedelta(seconds=seconds),
        count=seconds,
        cpu_usage=stats,
        memory_usage=stats,
        disk_usage=stats,
        network_rx=0,
        network_tx=0,
        last_event_at=start + timedelta(seconds=seconds - 1),
        emitted_at=datetime.now(UTC),
    ).to_json_bytes()


@pytest.fixture
async def producer(stack_settings: StackSettings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=stack_settings.kafka_bootstrap, acks="all", **SECURITY)
    await p.start()
    yield p
    await p.stop()


async def send_windows(
    producer: AIOKafkaProducer, topic: str, sid: str, start: datetime, values: list[float]
) -> None:
    for i, v in enumerate(values):
        await producer.send_and_wait(
            topic, window(sid, start + timedelta(seconds=5 * i), v), key=sid.encode()
        )


async def test_threshold_fires_after_for_resolves_and_survives_kill_9(
    conn: asyncpg.Connection,
    evaluator: Evaluator,
    producer: AIOKafkaProducer,
    topics: dict[str, str],
    receiver: Receiver,
    alertmanager: Alertmanager,
    webhook: Receiver,
) -> None:
    sid = await add_server(conn)
    rule = await store.create_rule(
        conn,
        RuleSpec.model_validate(
            {
                "name": "cpu-high",
                "kind": "threshold",
                "metric": "cpu_usage",
                "stat": "max",
                "op": ">",
                "value": 90,
                "for_seconds": 30,
                "servers": [sid],
            }
        ),
    )
    await evaluator.start()
    # 25 s crossing: pending. Kill -9 while pending; the restart finishes the `for`.
    await send_windows(producer, topics["5s"], sid, T0, [95.0] * 5)
    await asyncio.sleep(2)  # judged and stored
    evaluator.kill()
    assert await conn.fetchval("SELECT state FROM alert_state WHERE rule_id = $1", rule.id) == (
        "pending"
    )
    await evaluator.start()
    await send_windows(producer, topics["5s"], sid, T0 + timedelta(seconds=25), [95.0, 96.0])
    fired = await wait_for(lambda: receiver.alerts("cpu-high", "firing"), 30, "firing")
    assert fired[0]["startsAt"].startswith("2026-12-01T10:00:30")
    am_alerts = alertmanager.alerts()
    assert any(a["labels"]["alertname"] == "cpu-high" for a in am_alerts)

    # Kill -9 while firing: the restart re-sends it, Alertmanager notifies nobody again.
    evaluator.kill()
    await evaluator.start()
    await send_windows(producer, topics["5s"], sid, T0 + timedelta(seconds=35), [97.0])
    await asyncio.sleep(4)  # several resends and group intervals
    assert len(receiver.alerts("cpu-high", "firing")) == 1

    await send_windows(producer, topics["5s"], sid, T0 + timedelta(seconds=40), [20.0])
    resolved = await wait_for(lambda: receiver.alerts("cpu-high", "resolved"), 30, "resolved")
    assert len(resolved) == 1
    assert len(receiver.alerts("cpu-high", "firing")) == 1

    # The generic webhook got both events (after refusing twice: retried with backoff).
    await wait_for(lambda: len(webhook.notifications) >= 2, 30, "the webhook")
    assert webhook.refused == 2
    by_id = {e["event_id"]: e["status"] for e in webhook.notifications}
    assert sorted(by_id.values()) == ["firing", "resolved"]

    # Once each in the history, and on the alerts topic.
    history = await store.list_events(conn, rule_id=rule.id)
    assert [e.body["status"] for e in history] == ["resolved", "firing"]
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM alert_events "
            "WHERE published_at IS NULL OR alertmanager_at IS NULL OR webhook_at IS NULL"
        )
        == 0
    )


async def test_p99_hourly_absent_host_and_edit_while_firing(
    conn: asyncpg.Connection,
    evaluator: Evaluator,
    producer: AIOKafkaProducer,
    topics: dict[str, str],
    receiver: Receiver,
) -> None:
    busy, quiet = await add_server(conn), await add_server(conn)
    p99 = await store.create_rule(
        conn,
        RuleSpec.model_validate(
            {
                "name": "cpu-p99",
                "kind": "threshold",
                "metric": "cpu_usage",
                "stat": "p99",
                "resolution": "1h",
                "op": ">=",
                "value": 95,
                "servers": [busy],
            }
        ),
    )
    await store.create_rule(
        conn,
        RuleSpec.model_validate(
            {"name": "absent", "kind": "absence", "for_seconds": 3, "servers": [quiet]}
        ),
    )
    await evaluator.start()
    await producer.send_and_wait(
        topics["1h"], window(busy, T0, 97.0, Resolution.ONE_HOUR), key=busy.encode()
    )
    fired = await wait_for(lambda: receiver.alerts("cpu-p99", "firing"), 30, "p99 firing")
    assert fired[0]["annotations"]["value"] == "97"

    # The quiet host sends one window now, then nothing: absent after 3 s.
    now = datetime.now(UTC).replace(microsecond=0)
    await send_windows(producer, topics["5s"], quiet, now - timedelta(seconds=5), [10.0])
    await wait_for(lambda: receiver.alerts("absent", "firing"), 30, "absent firing")
    await send_windows(producer, topics["5s"], quiet, datetime.now(UTC), [10.0])
    await wait_for(lambda: receiver.alerts("absent", "resolved"), 30, "absent resolved")

    # Edited while firing: resolved at once (rule_edited); judged afresh from the next window.
    spec = p99.model_dump(include=set(RuleSpec.model_fields)) | {"value": 99}
    await store.replace_rule(conn, p99.id, RuleSpec.model_validate(spec))
    await wait_for(lambda: receiver.alerts("cpu-p99", "resolved"), 30, "edited → resolved")
    (edited,) = [e for e in await store.list_events(conn, rule_id=p99.id, status="resolved")]
    assert edited.body["reason"] == "rule_edited"
