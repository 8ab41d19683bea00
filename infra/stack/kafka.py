"""The local Apache Kafka broker: jars from Maven Central, KRaft combined mode, Java 17."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path

import psutil
from aiokafka.admin import AIOKafkaAdminClient

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

_RESOURCES = Path(__file__).resolve().parents[1] / "kafka"
_MARKER = "kafka.Kafka"


class KafkaBroker:
    """One broker that is also its own KRaft controller, under `<home>/kafka/`."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.dir = settings.home_dir / "kafka"
        self.libs = self.dir / "libs"
        self.data = self.dir / "data"
        self.logs = self.dir / "logs"
        self.properties = self.dir / "server.properties"
        self.pid_file = self.dir / "broker.pid"
        self.console_log = self.logs / "console.log"

    # -- install ---------------------------------------------------------------------------
    def install(self) -> None:
        """Resolve the broker's jars with Maven once per pom version (idempotent)."""
        pom = _RESOURCES / "pom.xml"
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()
        stamp = self.libs / ".pom.sha256"
        if stamp.exists() and stamp.read_text() == digest:
            return
        if shutil.which("mvn") is None:
            raise StackError("Maven (mvn) is not installed; run `make demo` or `make test`")
        staging = self.dir / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        run_checked(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            what="resolving the Kafka jars with Maven",
        )
        (staging / ".pom.sha256").write_text(digest)
        shutil.rmtree(self.libs, ignore_errors=True)
        staging.rename(self.libs)

    # -- configure -------------------------------------------------------------------------
    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
        if not java:
            raise StackError("Java 17 is not installed (no `java` on PATH, JAVA_HOME unset)")
        return str(java)

    def _write_config(self) -> None:
        s = self.settings
        host = s.kafka_host
        listeners = [f"PLAINTEXT://{host}:{s.kafka_port}"]
        advertised = list(listeners)
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        if s.kafka_proxied_port:
            # Clients that connected through the proxy are told the proxy's address, so every
            # later connection of theirs goes through it too.
            listeners.append(f"PROXIED://{host}:{s.kafka_proxied_port}")
            advertised.append(f"PROXIED://{host}:{s.kafka_proxy_port}")
            protocols.append("PROXIED:PLAINTEXT")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(
            "\n".join(
                [
                    "# Written by `fleetpulse stack up` from FLEETPULSE_* settings; edits are lost",
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{host}:{s.kafka_controller_port}",
                    f"listeners={','.join(listeners)},CONTROLLER://{host}:{s.kafka_controller_port}",
                    f"advertised.listeners={','.join(advertised)}",
                    "controller.listener.names=CONTROLLER",
                    f"listener.security.protocol.map={','.join(protocols)}",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.data}",
                    # Topics are made by `fleetpulse topics create`, from schemas/topics.py.
                    "auto.create.topics.enable=false",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=6",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    # A single local broker: no reason to wait for more group members.
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.check.interval.ms=60000",
                    "",
                ]
            )
        )

    def _format_storage(self) -> None:
        if (self.data / "meta.properties").exists():
            return
        cluster_id_file = self.dir / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(new_cluster_id())
        run_checked(
            [
                self._java(),
                "-cp",
                f"{self.libs}/*",
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                # `=`: an id that starts with "-" (one written before ids were chosen not to)
                # is still an id, not an option.
                f"--cluster-id={cluster_id_file.read_text().strip()}",
                "-c",
                str(self.properties),
            ],
            what="formatting the Kafka storage",
        )

    # -- lifecycle -------------------------------------------------------------------------
    def process(self) -> psutil.Process | None:
        return find_process(read_pid(self.pid_file), _MARKER)

    def healthy(self) -> bool:
        """True when the broker answers a metadata request."""
        if not port_open(self.settings.kafka_host, self.settings.kafka_port):
            return False
        return asyncio.run(_metadata_ok(self.settings.kafka_bootstrap))

    def start(self) -> bool:
        """Start the broker unless it runs; wait until healthy. True if it was started."""
        if self.process() is not None:
            wait_until(
                self.healthy,
                timeout=self.settings.kafka_start_timeout,
                what="Kafka",
                log=self.logs / "server.log",
            )
            return False
        s = self.settings
        for port in (s.kafka_port, s.kafka_controller_port):
            if port_open(s.kafka_host, port):
                raise StackError(
                    f"port {s.kafka_host}:{port} is taken by a process this stack did not start; "
                    "stop it or choose other ports (FLEETPULSE_KAFKA_BOOTSTRAP, "
                    "FLEETPULSE_KAFKA_CONTROLLER_PORT)"
                )
        self.install()
        self._write_config()
        self._format_storage()
        self.logs.mkdir(parents=True, exist_ok=True)
        argv = [
            self._java(),
            f"-Xmx{s.kafka_heap}",
            f"-Xms{s.kafka_heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.logs}",
            f"-Dlog4j2.configurationFile={_RESOURCES / 'log4j2.xml'}",
            "-cp",
            f"{self.libs}/*",
            _MARKER,
            str(self.properties),
        ]
        # Where this start's lines begin: an error from an earlier life of the broker is not
        # the cause of this one's failure.
        since = {log: _size(log) for log in (self.logs / "server.log", self.console_log)}
        pid = spawn(argv, log=self.console_log, cwd=self.dir)
        self.pid_file.write_text(f"{pid}\n")

        def ready() -> bool:
            if self.process() is None:
                if _alive(pid):  # forked, but not yet the JVM whose command line we look for
                    return False
                raise StackError(
                    f"the Kafka broker exited during start-up ({self._last_error(since)}); "
                    f"see {self.console_log}"
                )
            return self.healthy()

        wait_until(ready, timeout=s.kafka_start_timeout, what="Kafka", log=self.logs / "server.log")
        return True

    def _last_error(self, since: dict[Path, int]) -> str:
        """The last error line the broker logged since `since` (offsets per log file), to name
        the cause in the message."""
        for log, offset in since.items():
            try:
                with log.open("rb") as f:
                    f.seek(offset)
                    lines = f.read().decode(errors="replace").splitlines()
            except OSError:
                continue
            for line in reversed(lines):
                if "ERROR" in line or "Exception" in line:
                    return line.strip()[:300]
        return "no error logged"

    def stop(self) -> bool:
        """Stop the broker by PID (SIGTERM: controlled shutdown). True if it was running."""
        proc = self.process()
        if proc is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        stop_process(proc, timeout=60)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> ComponentStatus:
        proc = self.process()
        address = self.settings.kafka_bootstrap
        if proc is None:
            formatted = (self.data / "meta.properties").exists()
            detail = f"data in {self.data}" if formatted else "not formatted yet"
            return ComponentStatus("kafka", False, None, address, detail)
        detail = "healthy" if self.healthy() else "starting or unhealthy"
        return ComponentStatus("kafka", True, proc.pid, address, f"{detail}, data in {self.data}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _alive(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64 without padding, never starting
    with "-" (which command lines take for an option; Kafka's own `Uuid.randomUuid` skips
    those too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


async def _metadata_ok(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), timeout=5)
        await asyncio.wait_for(admin.list_topics(), timeout=5)
        return True
    except Exception:
        return False
    finally:
        # A half-started client may fail to close; there is nothing more to do with it.
        with contextlib.suppress(Exception):
            await admin.close()
