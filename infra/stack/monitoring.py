"""Prometheus beside the local stack (`fleetpulse stack up --monitoring`), under
`<home>/prometheus/`.

- **Prometheus** (Debian's `prometheus`) on 127.0.0.1:`FLEETPULSE_PROMETHEUS_PORT`, its data
  in `<home>/prometheus/data`, its configuration `<home>/prometheus/prometheus.yml` written
  from the settings, loading the rules shipped in `infra/monitoring/rules.yml`.
- **Alertmanager** (Debian's `prometheus-alertmanager`) on 127.0.0.1:
  `FLEETPULSE_ALERTMANAGER_PORT`, alone (no cluster port), under `<home>/alertmanager/`: where
  `fleetpulse alerts` and Prometheus's own rules deliver. Its configuration is an operator's
  own (`FLEETPULSE_ALERTMANAGER_CONFIG`) or generated: every alert to the webhook of
  `FLEETPULSE_ALERTMANAGER_WEBHOOK_URL`.
- **The PostgreSQL exporter** (Debian's `prometheus-postgres-exporter`), logged in as the
  read-only role over verify-full TLS. Its DSN is in its environment without the password,
  which it reads from the role's file (`DATA_SOURCE_PASS_FILE`): no password in an argv, an
  environment or a log line.
- **The JMX exporter agent** in each Kafka broker (`kafka_jvm_args`), from Maven Central.

What Prometheus scrapes is one file-based service discovery file, `targets.json`, rewritten at
each `stack up --monitoring` (Prometheus notices the change by itself, no restart): every
FleetPulse service where its settings put its /metrics (or `FLEETPULSE_SCRAPE_TARGETS`), the
exporters and Prometheus itself. A service that is not running shows as `up == 0`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from infra.settings import StackSettings
from infra.stack.process import (
    ComponentStatus,
    StackError,
    find_process,
    port_open,
    read_pid,
    run_checked,
    spawn,
    stop_process,
    wait_until,
)
from runtime.settings import READER_ROLE, role_password_path

RESOURCES = Path(__file__).resolve().parents[1] / "monitoring"
#: The recording and alerting rules the generated configuration loads.
RULES = RESOURCES / "rules.yml"
PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
POSTGRES_EXPORTER = Path("/usr/bin/prometheus-postgres-exporter")
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
AMTOOL = Path("/usr/bin/amtool")
#: Where Prometheus, the exporters and the agent listen: never beyond this machine.
LOOPBACK = "127.0.0.1"
#: The services whose /metrics the targets file lists, in its order.
SERVICES = ("agent", "simulator", "stream", "sink", "registry", "backup")
_START_TIMEOUT = 30.0
_INSTALL_HINT = "run `infra/scripts/system-deps.sh --monitoring` (or `apt-get install {}`)"


@dataclass(frozen=True)
class Target:
    """One address Prometheus scrapes."""

    job: str
    address: str
    scheme: str = "http"
    path: str = "/metrics"


def home(settings: StackSettings) -> Path:
    return settings.home_dir / "prometheus"


# -- what is scraped -----------------------------------------------------------------------
def service_targets(settings: StackSettings) -> list[Target]:
    """Each FleetPulse service's /metrics: `FLEETPULSE_SCRAPE_TARGETS` for the services it
    names, else where the service's own settings (the same environment) put it; a service
    whose metrics port is 0 is not scraped."""
    from infra.backup.settings import BackupSettings
    from producers.settings import AgentSettings, SimulatorSettings
    from registry.settings import RegistrySettings
    from sinks.settings import SinkSettings
    from streams.settings import StreamSettings

    registry = RegistrySettings()
    # The registry's API serves /metrics itself (a mounted app: `/metrics/`), over HTTPS
    # unless it is told to serve plain HTTP; a separate metrics port is plain HTTP.
    if registry.metrics_port:
        reg_scheme, reg_path = "http", "/metrics"
        reg_address = _address(registry.metrics_host, registry.metrics_port)
    else:
        reg_scheme, reg_path = registry.scheme, "/metrics/"
        reg_address = _address(registry.registry_host, registry.registry_port)
    own = {
        job: _address(s.metrics_host, s.metrics_port)
        for job, s in (
            ("agent", AgentSettings()),
            ("simulator", SimulatorSettings()),
            ("stream", StreamSettings()),
            ("sink", SinkSettings()),
            ("backup", BackupSettings()),
        )
    }
    own["registry"] = reg_address
    targets = []
    for job in SERVICES:
        mine = own[job]
        addresses = settings.scrape_targets.get(job, [mine] if mine else [])
        scheme, path = (reg_scheme, reg_path) if job == "registry" else ("http", "/metrics")
        targets += [Target(job, a, scheme, path) for a in addresses]
    return targets


def _address(host: str, port: int) -> str | None:
    if not port:
        return None
    # A service listening on every address is reached on this machine's loopback.
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - compared with, not bound to
        host = LOOPBACK
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def kafka_targets(settings: StackSettings, nodes: Sequence[int] | None = None) -> list[Target]:
    """The JMX exporter agent of each broker node (numbered from 1; default: every broker of
    the cluster)."""
    if nodes is None:
        nodes = range(1, settings.kafka_brokers + 1)
    return [Target("kafka", f"{LOOPBACK}:{jmx_port(settings, n)}") for n in nodes]


def targets(settings: StackSettings, kafka_nodes: Sequence[int] | None = None) -> list[Target]:
    """Everything Prometheus scrapes."""
    return [
        Target("prometheus", f"{LOOPBACK}:{settings.prometheus_port}"),
        Target("postgres", f"{LOOPBACK}:{settings.postgres_exporter_port}"),
        *kafka_targets(settings, kafka_nodes),
        *service_targets(settings),
    ]


def file_sd(found: Sequence[Target]) -> list[dict[str, Any]]:
    """Prometheus's file-based service discovery document for `found`: one group per job,
    scheme and path (Prometheus's `__scheme__` and `__metrics_path__` labels)."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for t in found:
        groups.setdefault((t.job, t.scheme, t.path), []).append(t.address)
    return [
        {
            "targets": addresses,
            "labels": {"job": job, "__scheme__": scheme, "__metrics_path__": path},
        }
        for (job, scheme, path), addresses in groups.items()
    ]


def prometheus_config(settings: StackSettings) -> dict[str, Any]:
    """prometheus.yml (JSON is YAML): one job whose targets are in targets.json, trusting the
    stack's CA for the registry's HTTPS."""
    interval = _duration(settings.prometheus_scrape_interval)
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            # A scrape must end before the next one starts.
            "scrape_timeout": _duration(min(settings.prometheus_scrape_interval, 10.0)),
            "external_labels": {"fleetpulse_home": str(settings.home_dir)},
        },
        "rule_files": [str(RULES)],
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"{LOOPBACK}:{settings.alertmanager_port}"]}]}
            ]
        },
        "scrape_configs": [
            {
                "job_name": "fleetpulse",
                "file_sd_configs": [{"files": [str(home(settings) / "targets.json")]}],
                "tls_config": {"ca_file": str(settings.home_dir / "tls" / "ca.crt")},
            }
        ],
    }


def alertmanager_config(settings: StackSettings) -> dict[str, Any]:
    """alertmanager.yml (JSON is YAML): every alert to one receiver, the webhook of
    `alertmanager_webhook_url` if set (resolved ones too), grouped per alert name and server."""
    receiver: dict[str, Any] = {"name": "default"}
    if settings.alertmanager_webhook_url:
        receiver["webhook_configs"] = [
            {"url": settings.alertmanager_webhook_url, "send_resolved": True}
        ]
    return {
        "route": {
            "receiver": "default",
            "group_by": ["alertname", "server_id"],
            "group_wait": _duration(settings.alertmanager_group_wait),
            "group_interval": _duration(settings.alertmanager_group_interval),
            "repeat_interval": _duration(settings.alertmanager_repeat_interval),
        },
        "receivers": [receiver],
    }


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _write(path: Path, text: str) -> bool:
    """Write `path` atomically (a rename: Prometheus never reads half a file); True if it
    changed."""
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


# -- the Kafka brokers' JMX exporter ---------------------------------------------------------
def jmx_port(settings: StackSettings, node: int) -> int:
    """Port of broker `node`'s JMX exporter (nodes are numbered from 1)."""
    return settings.kafka_jmx_port + node - 1


def install_jmx_agent(settings: StackSettings) -> Path:
    """The JMX exporter agent's jar, resolved with Maven once per pom version (idempotent)."""
    folder = home(settings) / "jmx"
    pom = RESOURCES / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    stamp = folder / ".pom.sha256"
    if not (stamp.exists() and stamp.read_text() == digest):
        if shutil.which("mvn") is None:
            raise StackError("Maven (mvn) is not installed; run `infra/scripts/system-deps.sh`")
        staging = folder.with_name("jmx.partial")
        shutil.rmtree(staging, ignore_errors=True)
        run_checked(
            ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
             "-DexcludeTransitive=true", f"-DoutputDirectory={staging}"],
            what="resolving the JMX exporter agent with Maven",
        )  # fmt: skip
        (staging / ".pom.sha256").write_text(digest)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    jars = sorted(folder.glob("jmx_prometheus_javaagent-*.jar"))
    if not jars:
        raise StackError(f"no JMX exporter agent jar in {folder}; delete the folder and retry")
    return jars[-1]


def kafka_jvm_args(settings: StackSettings, node: int = 1) -> list[str]:
    """The JVM options that make broker `node` serve its metrics to Prometheus on
    127.0.0.1:`jmx_port(settings, node)`; none unless monitoring is on (the setting, or this
    stack's Prometheus runs: a broker restarted by `rotate-certs` keeps its exporter)."""
    if not (settings.monitoring or Prometheus(settings).process() is not None):
        return []
    jar = install_jmx_agent(settings)
    port = jmx_port(settings, node)
    return [f"-javaagent:{jar}={LOOPBACK}:{port}:{RESOURCES / 'kafka-jmx.yml'}"]


def broker_exports_metrics(proc: psutil.Process) -> bool:
    """Whether a running broker was started with the JMX exporter agent."""
    with contextlib.suppress(psutil.Error):
        return any("jmx_prometheus_javaagent" in arg for arg in proc.cmdline())
    return False


# -- the processes ---------------------------------------------------------------------------
class _Daemon:
    """A background process of the monitoring, found by its pid file and command line."""

    name: str
    binary: Path
    package: str

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.dir = home(settings)
        self.pid_file = self.dir / f"{self.name}.pid"
        self.log = self.dir / f"{self.name}.log"

    @property
    def port(self) -> int:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def marker(self) -> str:
        """What only this stack's instance has on its command line."""
        return f"{LOOPBACK}:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir)}

    def healthy(self) -> bool:
        raise NotImplementedError

    def prepare(self) -> bool:
        """Write what the process reads; True if a running one should reload it."""
        return False

    def reload(self, proc: psutil.Process) -> None:
        return None

    def process(self) -> psutil.Process | None:
        return find_process(read_pid(self.pid_file), self.marker)

    def start(self) -> bool:
        """Start unless running (a running one reloads a changed configuration); wait until
        healthy. True if it was started."""
        if not self.binary.exists():
            raise StackError(f"{self.binary} not found: {_INSTALL_HINT.format(self.package)}")
        self.dir.mkdir(parents=True, exist_ok=True)
        changed = self.prepare()
        proc = self.process()
        if proc is not None:
            if changed:
                self.reload(proc)
            wait_until(self.healthy, timeout=_START_TIMEOUT, what=self.name, log=self.log)
            return False
        if port_open(LOOPBACK, self.port):
            raise StackError(
                f"port {LOOPBACK}:{self.port} is taken by a process this stack did not start; "
                f"stop it or choose another port ({self.port_setting})"
            )
        pid = spawn(self.argv(), log=self.log, cwd=self.dir, env=self.env())
        self.pid_file.write_text(f"{pid}\n")

        def ready() -> bool:
            if self.process() is None and not _alive(pid):
                raise StackError(f"{self.name} exited during start-up; see {self.log}")
            return self.healthy()

        wait_until(ready, timeout=_START_TIMEOUT, what=self.name, log=self.log)
        return True

    @property
    def port_setting(self) -> str:
        raise NotImplementedError

    def stop(self) -> bool:
        """Stop it by PID (SIGTERM). True if it was running."""
        proc = self.process()
        self.pid_file.unlink(missing_ok=True)
        if proc is None:
            return False
        stop_process(proc, timeout=30)
        return True

    def detail(self) -> str:
        return "healthy" if self.healthy() else "starting or unhealthy"

    def status(self) -> ComponentStatus:
        proc = self.process()
        if proc is None:
            return ComponentStatus(self.name, False, None, self.url, f"log in {self.log}")
        return ComponentStatus(self.name, True, proc.pid, self.url, self.detail())


class Prometheus(_Daemon):
    name = "prometheus"
    binary = PROMETHEUS
    package = "prometheus"

    def __init__(self, settings: StackSettings, kafka_nodes: Sequence[int] | None = None) -> None:
        super().__init__(settings)
        self.kafka_nodes = kafka_nodes
        self.config = self.dir / "prometheus.yml"
        self.targets_file = self.dir / "targets.json"
        self.data = self.dir / "data"

    @property
    def port(self) -> int:
        return self.settings.prometheus_port

    @property
    def port_setting(self) -> str:
        return "FLEETPULSE_PROMETHEUS_PORT"

    @property
    def marker(self) -> str:
        return f"--config.file={self.config}"

    def prepare(self) -> bool:
        found = targets(self.settings, self.kafka_nodes)
        _write(self.targets_file, json.dumps(file_sd(found), indent=2) + "\n")
        changed = _write(self.config, json.dumps(prometheus_config(self.settings), indent=2))
        if PROMTOOL.exists():  # the same package: a broken file is named before the start
            run_checked(
                [str(PROMTOOL), "check", "config", str(self.config)],
                what=f"checking {self.config}",
            )
        return changed

    def reload(self, proc: psutil.Process) -> None:
        # SIGHUP: Prometheus reads its configuration and rules again.
        proc.send_signal(signal.SIGHUP)

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            self.marker,
            f"--storage.tsdb.path={self.data}",
            f"--storage.tsdb.retention.time={self.settings.prometheus_retention}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--log.level=warn",
        ]

    def healthy(self) -> bool:
        return _http_get(f"{self.url}/-/ready") is not None

    def api(self, path: str) -> Any:
        """GET one of Prometheus's API paths (`/api/v1/...`); its `data`."""
        body = _http_get(self.url + path)
        if body is None:
            raise StackError(f"Prometheus at {self.url} does not answer {path}")
        return json.loads(body)["data"]

    def detail(self) -> str:
        if not self.healthy():
            return "starting or unhealthy"
        active = self.api("/api/v1/targets?state=active")["activeTargets"]
        up = sum(1 for t in active if t["health"] == "up")
        # The scrape manager takes up its targets a few seconds after a (re)start.
        targets = f"{up} of {len(active)} targets up" if active else "reading its targets"
        return f"healthy, {targets}, data in {self.data}"


class PostgresExporter(_Daemon):
    name = "postgres-exporter"
    binary = POSTGRES_EXPORTER
    package = "prometheus-postgres-exporter"
    role = READER_ROLE

    @property
    def port(self) -> int:
        return self.settings.postgres_exporter_port

    @property
    def port_setting(self) -> str:
        return "FLEETPULSE_POSTGRES_EXPORTER_PORT"

    @property
    def marker(self) -> str:
        return f"--web.listen-address={LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/metrics"

    def argv(self) -> list[str]:
        return [str(self.binary), self.marker, "--log.level=warn"]

    def env(self) -> dict[str, str]:
        s = self.settings
        password = role_password_path(s.home_dir, self.role)
        if not password.exists():
            raise StackError(f"no password file for {self.role} ({password}): start PostgreSQL")
        return {
            **super().env(),
            # No password here: the exporter reads it from the role's file.
            "DATA_SOURCE_URI": f"{s.pg_host}:{s.pg_port}/{s.pg_database}"
            f"?sslmode={s.pg_sslmode}&sslrootcert={s.ca_path}",
            "DATA_SOURCE_USER": self.role,
            "DATA_SOURCE_PASS_FILE": str(password),
        }

    def healthy(self) -> bool:
        body = _http_get(self.url)
        return body is not None and "\npg_up 1" in body

    def detail(self) -> str:
        body = _http_get(self.url)
        if body is None:
            return "starting or unhealthy"
        if "\npg_up 1" not in body:
            return f"running, but cannot reach PostgreSQL as {self.role}; see {self.log}"
        where = f"{self.settings.pg_host}:{self.settings.pg_port}"
        return f"healthy, PostgreSQL at {where} as {self.role}"


def _http_get(url: str, timeout: float = 2.0) -> str | None:
    """The body of a 200 answer from one of our loopback endpoints, or None."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - http on loopback
            return str(r.read().decode())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Alertmanager(_Daemon):
    """Debian's `prometheus-alertmanager`, alone (no cluster peers), its data and generated
    configuration under `<home>/alertmanager/`."""

    name = "alertmanager"
    binary = ALERTMANAGER
    package = "prometheus-alertmanager"

    def __init__(self, settings: StackSettings) -> None:
        super().__init__(settings)
        self.dir = settings.home_dir / "alertmanager"
        self.pid_file = self.dir / f"{self.name}.pid"
        self.log = self.dir / f"{self.name}.log"
        self.generated = self.dir / "alertmanager.yml"

    @property
    def config(self) -> Path:
        return self.settings.alertmanager_config or self.generated

    @property
    def port(self) -> int:
        return self.settings.alertmanager_port

    @property
    def port_setting(self) -> str:
        return "FLEETPULSE_ALERTMANAGER_PORT"

    @property
    def marker(self) -> str:
        return f"--web.listen-address={LOOPBACK}:{self.port}"

    def prepare(self) -> bool:
        changed = False
        if self.settings.alertmanager_config is None:
            text = json.dumps(alertmanager_config(self.settings), indent=2) + "\n"
            changed = _write(self.generated, text)
        elif not self.config.exists():
            raise StackError(f"FLEETPULSE_ALERTMANAGER_CONFIG: {self.config} does not exist")
        if AMTOOL.exists():
            run_checked(
                [str(AMTOOL), "check-config", str(self.config)], what=f"checking {self.config}"
            )
        return changed

    def reload(self, proc: psutil.Process) -> None:
        proc.send_signal(signal.SIGHUP)

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            f"--config.file={self.config}",
            f"--storage.path={self.dir / 'data'}",
            self.marker,
            "--cluster.listen-address=",  # alone: no gossip port
            "--log.level=warn",
        ]

    def healthy(self) -> bool:
        return _http_get(f"{self.url}/-/ready") is not None

    def alerts(self) -> list[dict[str, Any]]:
        """Alertmanager's `/api/v2/alerts`."""
        body = _http_get(f"{self.url}/api/v2/alerts")
        if body is None:
            raise StackError(f"Alertmanager at {self.url} does not answer")
        found: list[dict[str, Any]] = json.loads(body)
        return found

    def detail(self) -> str:
        if not self.healthy():
            return "starting or unhealthy"
        return f"healthy, {len(self.alerts())} alerts, configuration {self.config}"


def components(settings: StackSettings) -> list[_Daemon]:
    return [PostgresExporter(settings), Alertmanager(settings), Prometheus(settings)]


def up(settings: StackSettings) -> list[tuple[ComponentStatus, bool]]:
    """Start the exporter and Prometheus unless they run; rewrite Prometheus's configuration
    and targets (a running Prometheus reloads them). Each one's status and whether this call
    started it."""
    started = []
    for c in components(settings):
        was_started = c.start()
        started.append((c.status(), was_started))
    return started


def down(settings: StackSettings) -> list[tuple[str, bool]]:
    """Stop Prometheus and the exporter by PID: those that were started (a pid file is
    left), each with whether it was running."""
    return [(c.name, c.stop()) for c in reversed(components(settings)) if c.pid_file.exists()]


def status(settings: StackSettings) -> list[ComponentStatus]:
    """The monitoring's components, if it is on or was started (a pid file is left)."""
    found = components(settings)
    if not settings.monitoring and not any(c.pid_file.exists() for c in found):
        return []
    return [c.status() for c in found]
