"""`stack up --monitoring`: the shipped rules (checked and unit-tested by promtool), the
generated configuration, and a real Prometheus scraping real services on the test stack."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from infra import stack
from infra.settings import StackSettings
from infra.stack import monitoring
from infra.stack.monitoring import PROMTOOL, RULES, Prometheus
from infra.stack.process import free_port
from runtime.settings import READER_ROLE, role_password_path
from runtime.topics import create_topics
from schemas.topics import TopicSpec
from tests.conftest import ROOT
from tests.e2e.pipeline import register, running_pipeline, wait_for
from tests.factories import event_dict
from tests.kafka import produce

ALERTS = {
    "FleetPulseServiceDown",
    "FleetPulseConsumerLagGrowing",
    "FleetPulseDeadLettersRising",
    "FleetPulseCheckpointStale",
    "FleetPulseBackupStale",
}

CHECKPOINT = "fleetpulse_stream_last_checkpoint_timestamp_seconds"
DESCRIPTIONS = {
    "FleetPulseServiceDown": "The last scrapes of a:1 failed for a minute: the process is not "
    "running, or hangs. `fleetpulse stack status`; the service's log.",
    "FleetPulseConsumerLagGrowing": "Its backlog has grown for 10 minutes. `fleetpulse lag` "
    "shows it per topic.",
    "FleetPulseDeadLettersRising": "The DLQ topic (metrics.dlq.v1) holds each record with its "
    "reason; the `fleetpulse_sink_dropped_total` series tell which reason rises.",
    "FleetPulseCheckpointStale": "Its offsets are not committed and its state not saved: a "
    "crash now replays everything since. Its log says why (Kafka unreachable, a failing send).",
    "FleetPulseBackupStale": "`fleetpulse backup list`; the scheduler's log (`fleetpulse backup "
    "schedule`).",
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL.exists(), f"{PROMTOOL} missing: run `infra/scripts/system-deps.sh --test`"
    return subprocess.run(
        [str(PROMTOOL), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.integration  # promtool: a package of system-deps.sh --test
def test_the_rules_are_valid_and_name_every_documented_alert() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    readme = (ROOT / "README.md").read_text()
    for alert in ALERTS:
        assert f"alert: {alert}" in RULES.read_text(), alert
        assert f"`{alert}`" in readme, f"{alert} is not in the README"


@pytest.mark.integration  # promtool: a package of system-deps.sh --test
def test_each_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    """promtool's rule unit tests: series over time in, alerts expected out."""

    def alert(name: str, at: str, *fired: tuple[dict[str, str], str]) -> dict[str, Any]:
        """At `at`, alert `name` fires once per (labels, summary) of `fired`, no more."""
        return {
            "eval_time": at,
            "alertname": name,
            "exp_alerts": [
                {
                    "exp_labels": labels,
                    "exp_annotations": {"summary": summary, "description": DESCRIPTIONS[name]},
                }
                for labels, summary in fired
            ],
        }

    warning, critical = {"severity": "warning"}, {"severity": "critical"}
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {"series": 'up{job="sink", instance="a:1"}', "values": "1 1 0x8"},
                    {"series": 'up{job="stream", instance="b:1"}', "values": "1x10"},
                ],
                "alert_rule_test": [
                    alert("FleetPulseServiceDown", "30s"),  # down, but not for a minute yet
                    alert(
                        "FleetPulseServiceDown",
                        "2m",
                        (
                            {"job": "sink", "instance": "a:1", **critical},
                            "sink at a:1 does not answer its /metrics",
                        ),
                    ),
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    # The stream group falls 100 messages a minute further behind from 1,000 on,
                    # to 3,300 at 23 min, then holds there (so the value the alert reads at 25
                    # min is the same whichever group promtool evaluates first); the sink's is
                    # steady at 5,000. Growing for 10 minutes fires.
                    {
                        "series": 'fleetpulse_stream_lag{instance="w1"}',
                        "values": "1000+50x23 2150x17",
                    },
                    {"series": 'fleetpulse_stream_lag{instance="w2"}', "values": "0+50x23 1150x17"},
                    {"series": 'fleetpulse_sink_lag{instance="s1"}', "values": "5000x40"},
                ],
                "alert_rule_test": [
                    alert("FleetPulseConsumerLagGrowing", "5m"),
                    alert(
                        "FleetPulseConsumerLagGrowing",
                        "25m",
                        (
                            {"component": "stream", **warning},
                            "the stream group is 3300 messages behind and falling further behind",
                        ),
                    ),
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    # The sink: 100 rows a second, 5 dead-lettered (5 %); the stream: 1,000
                    # events a second, 1 dead-lettered (0.1 %).
                    {"series": "fleetpulse_sink_received_total", "values": "0+6000x30"},
                    {
                        "series": 'fleetpulse_sink_dropped_total{reason="db_rejected"}',
                        "values": "0+300x30",
                    },
                    {"series": "fleetpulse_stream_received_total", "values": "0+60000x30"},
                    {
                        "series": 'fleetpulse_stream_dropped_total{reason="late"}',
                        "values": "0+60x30",
                    },
                ],
                "alert_rule_test": [
                    alert(
                        "FleetPulseDeadLettersRising",
                        "20m",
                        ({"component": "sink", **warning}, "sink dead-letters 5% of its input"),
                    )
                ],
            },
            {
                "interval": "15s",
                "input_series": [
                    # Worker w1 checkpoints until 2 min, then no more; w2 keeps on.
                    {
                        "series": f'{CHECKPOINT}{{instance="w1"}}',
                        "values": "0+15x8 120x20",
                    },
                    {
                        "series": f'{CHECKPOINT}{{instance="w2"}}',
                        "values": "0+15x28",
                    },
                ],
                "alert_rule_test": [
                    alert("FleetPulseCheckpointStale", "3m"),  # 60 s old: not yet
                    alert(
                        "FleetPulseCheckpointStale",
                        "5m",
                        (
                            {"instance": "w1", **critical},
                            "stream worker w1 has not checkpointed for 3m 0s",
                        ),
                    ),
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": "fleetpulse_backup_last_backup_age_seconds",
                        # 25 h 50 min old at first, a minute older each minute: past 26 h
                        # from 11 min on, for 10 minutes at 21 min.
                        "values": "93000+60x30",
                    },
                ],
                "alert_rule_test": [
                    alert("FleetPulseBackupStale", "15m"),
                    alert(
                        "FleetPulseBackupStale",
                        "25m",
                        (warning, "the newest base backup is 1d 2h 15m 0s old"),
                    ),
                ],
            },
        ],
    }
    path = tmp_path / "rules_test.yml"
    path.write_text(json.dumps(tests))  # JSON is YAML
    result = _promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration  # promtool: a package of system-deps.sh --test
def test_the_generated_configuration_is_valid(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("FLEETPULSE_HOME", str(tmp_path))
    clean_env.setenv("FLEETPULSE_SCRAPE_TARGETS", '{"stream": ["127.0.0.1:1", "127.0.0.1:2"]}')
    settings = StackSettings(monitoring=True, prometheus_scrape_interval=1.0)
    prometheus = Prometheus(settings)
    prometheus.prepare()  # writes both files and runs `promtool check config` on them
    groups = json.loads(prometheus.targets_file.read_text())
    by_job = {g["labels"]["job"]: g for g in groups}
    assert by_job["stream"]["targets"] == ["127.0.0.1:1", "127.0.0.1:2"]
    # Every other service where its own settings (here: their defaults) put its /metrics.
    assert by_job["agent"]["targets"] == ["127.0.0.1:9471"]
    assert by_job["sink"]["targets"] == ["127.0.0.1:9474"]
    assert by_job["backup"]["targets"] == ["127.0.0.1:9475"]
    assert by_job["registry"]["targets"] == ["127.0.0.1:8080"]
    assert by_job["registry"]["labels"]["__scheme__"] == "https"
    assert by_job["registry"]["labels"]["__metrics_path__"] == "/metrics/"
    assert by_job["kafka"]["targets"] == [f"127.0.0.1:{settings.kafka_jmx_port}"]
    assert {"prometheus", "postgres", "simulator"} <= by_job.keys()
    config = json.loads(prometheus.config.read_text())
    assert config["global"]["scrape_interval"] == "1000ms"
    assert config["rule_files"] == [str(RULES)]
    # The broker's agent: one port per node, on loopback (the jar's resolution by Maven is
    # the integration test's, whose broker runs with it).
    clean_env.setattr(monitoring, "install_jmx_agent", lambda s: Path("/agent.jar"))
    jvm = monitoring.kafka_jvm_args(settings, node=3)
    assert len(jvm) == 1 and jvm[0].startswith("-javaagent:/agent.jar=")
    assert jvm[0].endswith(f"=127.0.0.1:{settings.kafka_jmx_port + 2}:{RULES.parent}/kafka-jmx.yml")
    assert monitoring.kafka_jvm_args(StackSettings(monitoring=False)) == []


def test_a_missing_prometheus_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Prometheus, "binary", tmp_path / "no-prometheus")
    with pytest.raises(stack.StackError, match=r"system-deps\.sh --monitoring.*prometheus"):
        Prometheus(StackSettings(home=tmp_path)).start()


# -- Prometheus against the real stack -----------------------------------------------------
#: An hour boundary of yesterday: windows long closed by the clock, inside the partitions.
T0 = datetime.now(UTC).replace(hour=6, minute=0, second=0, microsecond=0) - timedelta(days=1)
HOSTS = 3  # the simulator's


@pytest.fixture
async def side_topic(stack_settings: StackSettings) -> str:
    """A raw topic of its own for the agent and the simulator (nothing consumes it)."""
    name = f"test.mon.{uuid.uuid4().hex[:8]}"
    await create_topics(stack_settings, [TopicSpec(name, 1, 3_600_000)])
    return name


@pytest.fixture
async def producers(side_topic: str, tmp_path: Path) -> AsyncIterator[dict[str, int]]:
    """The agent and the simulator, each with a /metrics port; their ports by name."""
    ports = {"agent": free_port(), "simulator": free_port()}
    argv = {"agent": ["agent", "--server-id", str(uuid.uuid4())], "simulator": ["simulate"]}
    procs = []
    for name, port in ports.items():
        env = {
            **os.environ,
            "FLEETPULSE_RAW_TOPIC": side_topic,
            "FLEETPULSE_METRICS_PORT": str(port),
            "FLEETPULSE_HOSTS": str(HOSTS),
        }
        with (tmp_path / f"{name}.log").open("wb") as log:
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "infra.cli",
                    *argv[name],
                    env=env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=log,
                )
            )
    try:
        yield ports
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout=30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.fixture
def monitored(stack_settings: StackSettings) -> Iterator[Any]:
    """A function starting the stack's monitoring (1 s scrapes) on the given services; the
    monitoring is stopped at the end."""
    base = StackSettings(monitoring=True)
    monitoring.down(base)  # a Prometheus left by an earlier run: begin with empty data
    shutil.rmtree(Prometheus(base).data, ignore_errors=True)

    def start(targets: dict[str, list[str]]) -> StackSettings:
        settings = StackSettings(
            monitoring=True, prometheus_scrape_interval=1.0, scrape_targets=targets
        )
        started = {st.name for st, _ in stack.up(settings)}
        assert {"prometheus", "postgres-exporter"} <= started
        return settings

    yield start
    monitoring.down(base)


def _query(prometheus: Prometheus, expr: str) -> dict[str, float]:
    """An instant query: each series' value, by its labels (as `k=v,...`)."""
    result = prometheus.api("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return {
        ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
        for r in result["result"]
    }


def _value(prometheus: Prometheus, expr: str) -> float | None:
    values = list(_query(prometheus, expr).values())
    assert len(values) <= 1, (expr, values)
    return values[0] if values else None


@pytest.mark.integration
async def test_prometheus_scrapes_every_service_and_sees_the_traffic_caused(
    stack_settings: StackSettings,
    monitored: Any,
    producers: dict[str, int],
    tmp_path: Path,
) -> None:
    ports = {"stream": free_port(), "sink": free_port()}
    async with running_pipeline(stack_settings, tmp_path, metrics_ports=ports) as (p, token):
        a, unknown = str(uuid.uuid4()), str(uuid.uuid4())
        await register(p, token, a)
        targets = {
            "agent": [f"127.0.0.1:{producers['agent']}"],
            "simulator": [f"127.0.0.1:{producers['simulator']}"],
            "stream": [f"127.0.0.1:{ports['stream']}"],
            "sink": [f"127.0.0.1:{ports['sink']}"],
            "registry": [f"127.0.0.1:{p.port}"],
            "backup": [],
        }
        settings = await asyncio.to_thread(monitored, targets)
        prometheus = Prometheus(settings)

        jobs = {"prometheus", "postgres", "kafka", "agent", "simulator", "stream", "sink"}
        jobs.add("registry")

        async def all_up() -> list[tuple[str, str]] | None:
            active = (await asyncio.to_thread(prometheus.api, "/api/v1/targets"))["activeTargets"]
            health = [(t["labels"]["job"], t["health"]) for t in active]
            scraped = {job for job, h in health if h == "up"} == jobs and len(health) == len(jobs)
            return health if scraped else None

        # Every target scraped before the traffic: its rates start from the counts at rest.
        await wait_for("every target up", all_up, timeout=30)

        # Known traffic: 60 s of a registered server (12 five-second windows, an hour, a
        # day), 10 s of one the registry does not know (2 windows, an hour, a day: the sink
        # dead-letters its 4 rows), and one message that is not JSON.
        def raw(sid: str, second: int) -> tuple[bytes, bytes]:
            at = (T0 + timedelta(seconds=second)).isoformat()
            return sid.encode(), json.dumps(event_dict(server_id=sid, timestamp=at)).encode()

        records = [raw(a, i) for i in range(60)] + [raw(unknown, i) for i in range(10)]
        records.append((b"junk", b"not json"))
        await produce(stack_settings.kafka_bootstrap, p.topics.raw, records)

        # Each on its own job: a process serves the series of the components it imports at
        # 0 (the registry's, the sink's read path).
        expected = {
            'fleetpulse_stream_received_total{job="stream"}': 71,
            'fleetpulse_stream_sent_total{job="stream", output="5s"}': 14,
            'fleetpulse_stream_sent_total{job="stream", output="1h"}': 2,
            'fleetpulse_stream_sent_total{job="stream", output="1d"}': 2,
            'fleetpulse_stream_dropped_total{job="stream", reason="invalid_json"}': 1,
            'fleetpulse_sink_received_total{job="sink"}': 18,
            'fleetpulse_sink_sent_total{job="sink", output="metrics_snapshots"}': 12,
            'fleetpulse_sink_sent_total{job="sink", output="metrics_hourly"}': 1,
            'fleetpulse_sink_sent_total{job="sink", output="metrics_daily"}': 1,
            'fleetpulse_sink_dropped_total{job="sink", reason="db_rejected"}': 4,
            # The broker's own count, through its JMX exporter.
            f'kafka_server_brokertopicmetrics_messagesin_total{{topic="{p.topics.raw}"}}': 71,
        }

        async def seen() -> dict[str, float | None] | None:
            got = {e: await asyncio.to_thread(_value, prometheus, e) for e in expected}
            return None if got != expected else got

        try:
            await wait_for("the counts the traffic caused", seen, timeout=60)
        except AssertionError:
            got = {e: await asyncio.to_thread(_value, prometheus, e) for e in expected}
            raise AssertionError(
                {e: (got[e], v) for e, v in expected.items() if got[e] != v}
            ) from None

        assert await asyncio.to_thread(_value, prometheus, "pg_up") == 1
        # The exporter's password is in none of its command line, its environment, its log.
        exporter = monitoring.PostgresExporter(settings)
        proc = exporter.process()
        assert proc is not None
        password = role_password_path(settings.home_dir, READER_ROLE).read_text().strip()
        assert password not in " ".join(proc.cmdline())
        assert all(password not in value for value in proc.environ().values())
        assert password not in exporter.log.read_text()

        # The producers: the agent samples once a second, the simulator sends HOSTS a second.
        agent = await asyncio.to_thread(
            _value, prometheus, 'fleetpulse_agent_sent_total{job="agent"}'
        )
        simulated = await asyncio.to_thread(
            _value, prometheus, 'fleetpulse_simulator_sent_total{job="simulator"}'
        )
        assert agent is not None and agent >= 1
        assert simulated is not None and simulated >= HOSTS
        # The stream worker checkpoints every 2 s: the recording rule sees a fresh one (over
        # a few seconds: a scrape that a busy worker answers late leaves a gap).
        age = await asyncio.to_thread(
            _value, prometheus, "max_over_time(fleetpulse:stream_checkpoint_age:seconds[10s])"
        )
        assert age is not None and not math.isnan(age) and age < 15
        # The rules are loaded; the dead letters caused (4 of the sink's 18 rows, 1 of the
        # stream's 71 events) make FleetPulseDeadLettersRising pending for both (it fires after
        # 5 minutes), and nothing fires.
        rules = await asyncio.to_thread(prometheus.api, "/api/v1/rules?type=alert")
        loaded = {r["name"] for g in rules["groups"] for r in g["rules"]}
        assert loaded == ALERTS

        async def pending() -> set[tuple[str, str]] | None:
            alerts = (await asyncio.to_thread(prometheus.api, "/api/v1/alerts"))["alerts"]
            assert not [a for a in alerts if a["state"] == "firing"], alerts
            found = {
                (a["labels"]["alertname"], a["labels"].get("component", ""))
                for a in alerts
                if a["state"] == "pending"
            }
            dlq = {("FleetPulseDeadLettersRising", c) for c in ("sink", "stream")}
            return found if dlq <= found else None

        await wait_for("the dead letters' alert pending", pending, timeout=30)

        statuses = await asyncio.to_thread(stack.status, settings)
        lines = [st for st in statuses if st.name == "prometheus"]
        assert (
            lines[0].running and lines[0].address == f"http://127.0.0.1:{settings.prometheus_port}"
        )
