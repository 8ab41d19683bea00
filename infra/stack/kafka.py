"""The local Apache Kafka cluster: jars from Maven Central, Java 17, KRaft combined mode.

One broker by default; `FLEETPULSE_KAFKA_BROKERS=3` (`stack up --brokers 3`) runs three, each
its own controller too (a quorum of three voters), on its own ports (the first broker's plus
10 and 20) and under its own folder (`<home>/kafka/`, `<home>/kafka-2/`, `<home>/kafka-3/`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import shutil
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from aiokafka.admin import AIOKafkaAdminClient

from infra.settings import StackSettings
from infra.stack.monitoring import kafka_jvm_args
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
from infra.stack.tls import COMMON_NAMES, issue
from runtime.settings import NODE_PORT_STEP

log = logging.getLogger(__name__)
_RESOURCES = Path(__file__).resolve().parents[1] / "kafka"
_MARKER = "kafka.Kafka"
#: Where the controller and inter-broker listeners are, whatever address clients use.
LOOPBACK = "127.0.0.1"
#: The super user of the clients' listener (topics, ACLs, the stack's checks).
ADMIN = "admin"
#: The broker's own principal: its certificate's common name.
BROKER_PRINCIPAL = COMMON_NAMES["kafka"]


@dataclass(frozen=True)
class BrokerTls:
    ca: Path
    cert: Path
    key: Path
    keystore: Path


class KafkaNode:
    """One broker of the local cluster, also one of its KRaft controllers: broker `node` (1,
    2, 3) under `<home>/kafka/` (the first) or `<home>/kafka-<node>/`."""

    def __init__(self, settings: StackSettings, node: int = 1) -> None:
        self.settings = settings
        self.node = node
        home = settings.home_dir
        #: The first broker's folder holds what the cluster shares: jars, cluster id, TLS.
        self.first = home / "kafka"
        self.dir = self.first if node == 1 else home / f"kafka-{node}"
        self.libs = self.first / "libs"
        self.data = self.dir / "data"
        self.logs = self.dir / "logs"
        self.properties = self.dir / "server.properties"
        self.pid_file = self.dir / "broker.pid"
        self.console_log = self.logs / "console.log"

    def port(self, first: int, node: int | None = None) -> int:
        """This node's (or `node`'s) port for a listener whose first-broker port is `first`
        (0 stays 0: no such listener)."""
        n = self.node if node is None else node
        return first + (n - 1) * NODE_PORT_STEP if first else 0

    @property
    def client_port(self) -> int:
        return self.port(self.settings.kafka_port)

    @property
    def controller_port(self) -> int:
        return self.port(self.settings.kafka_controller_port)

    @property
    def internal_port(self) -> int:
        return self.port(self.settings.kafka_internal_port)

    @property
    def plaintext_port(self) -> int:
        return self.port(self.settings.kafka_plaintext_port)

    @property
    def name(self) -> str:
        return "kafka" if self.settings.kafka_brokers == 1 else f"kafka-{self.node}"

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
        staging = self.first / "libs.partial"
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
    def java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
        if not java:
            raise StackError("Java 17 is not installed (no `java` on PATH, JAVA_HOME unset)")
        return str(java)

    def _write_config(self) -> None:
        s = self.settings
        host = s.kafka_host
        tls = self._install_tls()
        port, internal, plaintext = self.client_port, self.internal_port, self.plaintext_port
        # Clients: TLS and a SCRAM user. The broker itself, and the stack's tools acting as
        # it: mutual TLS with its own certificate (principal `kafka-broker`), on the
        # inter-broker and controller listeners, so it needs no password and can create the
        # SCRAM users before any exists.
        listeners = [f"CLIENT://{host}:{port}", f"INTERNAL://{LOOPBACK}:{internal}"]
        advertised = list(listeners)
        protocols = ["CLIENT:SASL_SSL", "INTERNAL:SSL", "CONTROLLER:SSL"]
        sasl_listeners = ["client"]
        if s.kafka_proxied_port:
            # Clients that connected through the proxy are told the proxy's address, so every
            # later connection of theirs goes through it too.
            listeners.append(f"PROXIED://{host}:{s.kafka_proxied_port}")
            advertised.append(f"PROXIED://{host}:{s.kafka_proxy_port}")
            protocols.append("PROXIED:SASL_SSL")
            sasl_listeners.append("proxied")
        if plaintext:
            log.warning(
                "the broker has a PLAINTEXT listener on %s:%d (FLEETPULSE_KAFKA_PLAINTEXT_PORT): "
                "no TLS, no authentication: any client there may do anything",
                host,
                plaintext,
            )
            listeners.append(f"PLAINTEXT://{host}:{plaintext}")
            advertised.append(f"PLAINTEXT://{host}:{plaintext}")
            protocols.append("PLAINTEXT:PLAINTEXT")
        super_users = [f"User:{ADMIN}", f"User:{BROKER_PRINCIPAL}"]
        if s.kafka_plaintext_port:
            # Its clients have no identity (`ANONYMOUS`, which nothing else can be): what the
            # setting asks for is a listener where any client may do anything.
            super_users.append("User:ANONYMOUS")
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        nodes = range(1, s.kafka_brokers + 1)
        voters = ",".join(f"{n}@{LOOPBACK}:{self.port(s.kafka_controller_port, n)}" for n in nodes)
        # Internal topics as replicated as the contract's (runtime/topics.py): 3 copies, 2 in
        # sync for a write, once there are three brokers.
        rf, isr = s.kafka_replication_factor, s.kafka_min_insync
        self.dir.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(
            "\n".join(
                [
                    "# Written by `fleetpulse stack up` from FLEETPULSE_* settings; edits are lost",
                    "process.roles=broker,controller",
                    f"node.id={self.node}",
                    f"controller.quorum.voters={voters}",
                    f"listeners={','.join(listeners)},CONTROLLER://{LOOPBACK}:{self.controller_port}",
                    f"advertised.listeners={','.join(advertised)}",
                    "controller.listener.names=CONTROLLER",
                    f"listener.security.protocol.map={','.join(protocols)}",
                    "inter.broker.listener.name=INTERNAL",
                    # TLS: the broker's key and certificate, the stack's CA.
                    "ssl.keystore.type=PEM",
                    f"ssl.keystore.location={tls.keystore}",
                    "ssl.truststore.type=PEM",
                    f"ssl.truststore.location={tls.ca}",
                    "ssl.enabled.protocols=TLSv1.3,TLSv1.2",
                    "listener.name.internal.ssl.client.auth=required",
                    "listener.name.controller.ssl.client.auth=required",
                    # A certificate's principal is its common name.
                    "ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT",
                    # SCRAM users live in the cluster's metadata (`fleetpulse stack up` makes them).
                    "sasl.enabled.mechanisms=SCRAM-SHA-512",
                    *(
                        f"listener.name.{n}.scram-sha-512.sasl.jaas.config={scram}"
                        for n in sasl_listeners
                    ),
                    # Deny by default: a principal may do what an ACL allows it, nothing else.
                    "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                    "allow.everyone.if.no.acl.found=false",
                    f"super.users={';'.join(super_users)}",
                    f"log.dirs={self.data}",
                    # Topics are made by `fleetpulse topics create`, from schemas/topics.py.
                    "auto.create.topics.enable=false",
                    "num.partitions=1",
                    f"default.replication.factor={rf}",
                    f"min.insync.replicas={isr}",
                    # Never elect a replica that lacks acknowledged writes.
                    "unclean.leader.election.enable=false",
                    f"offsets.topic.replication.factor={rf}",
                    "offsets.topic.num.partitions=6",
                    f"transaction.state.log.replication.factor={rf}",
                    f"transaction.state.log.min.isr={isr}",
                    f"share.coordinator.state.topic.replication.factor={rf}",
                    f"share.coordinator.state.topic.min.isr={isr}",
                    # A local cluster: no reason to wait for more group members.
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.check.interval.ms=60000",
                    "",
                ]
            )
        )

    def _install_tls(self, *, force: bool = False) -> BrokerTls:
        """The broker's certificate from the stack's CA (issued once, or again if `force`),
        and its PEM keystore (key and certificate chain in one file, mode 0600)."""
        tls_dir = self.settings.home_dir / "tls"
        names = ("localhost", self.settings.kafka_host, *self.settings.tls_hostnames)
        cert = issue(tls_dir, "kafka", hostnames=names, force=force)
        folder = self.first / "tls"
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        keystore = folder / "keystore.pem"
        content = cert.key.read_bytes() + cert.cert.read_bytes()
        if not keystore.exists() or keystore.read_bytes() != content:
            tmp = folder / ".keystore.pem.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            tmp.replace(keystore)
        return BrokerTls(ca=tls_dir / "ca.crt", cert=cert.cert, key=cert.key, keystore=keystore)

    def tls(self) -> BrokerTls:
        """The broker's TLS files (issued if missing)."""
        return self._install_tls()

    def internal_ssl_context(self) -> ssl.SSLContext:
        """TLS as the broker's own identity, for the inter-broker listener (the stack's tools)."""
        tls = self.tls()
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        return ctx

    @property
    def internal_bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.internal_port}"

    def _format_storage(self) -> None:
        if (self.data / "meta.properties").exists():
            return
        cluster_id_file = self.first / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(new_cluster_id())
        run_checked(
            [
                self.java(),
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
            what=f"formatting the storage of {self.name}",
        )

    # -- lifecycle -------------------------------------------------------------------------
    def process(self) -> psutil.Process | None:
        return find_process(read_pid(self.pid_file), _MARKER)

    def healthy(self) -> bool:
        """True when the broker answers a metadata request (as itself, over mutual TLS)."""
        if not port_open(LOOPBACK, self.internal_port):
            return False
        return asyncio.run(
            metadata_ok(
                self.internal_bootstrap,
                security_protocol="SSL",
                ssl_context=self.internal_ssl_context(),
            )
        )

    def _ports(self) -> list[tuple[str, int]]:
        s = self.settings
        ours = [(s.kafka_host, self.client_port), (s.kafka_host, s.kafka_proxied_port)]
        ours += [(s.kafka_host, self.plaintext_port), (LOOPBACK, self.internal_port)]
        return [*ours, (LOOPBACK, self.controller_port)]

    def launch(self) -> int | None:
        """Start the broker's JVM unless it runs, without waiting (the brokers of a cluster
        start together: none is ready before a majority of controllers is up). Its PID if it
        was started, None if it was running."""
        if self.process() is not None:
            return None
        for host, port in self._ports():
            if port and port_open(host, port):
                raise StackError(
                    f"port {host}:{port} ({self.name}) is taken by a process this stack did not "
                    "start; stop it or choose other ports (FLEETPULSE_KAFKA_BOOTSTRAP, "
                    "FLEETPULSE_KAFKA_INTERNAL_PORT, FLEETPULSE_KAFKA_CONTROLLER_PORT, ...)"
                )
        s = self.settings
        self._write_config()
        self._format_storage()
        self.logs.mkdir(parents=True, exist_ok=True)
        argv = [
            self.java(),
            f"-Xmx{s.kafka_heap}",
            f"-Xms{s.kafka_heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.logs}",
            f"-Dlog4j2.configurationFile={_RESOURCES / 'log4j2.xml'}",
            *kafka_jvm_args(s, node=self.node),  # the JMX exporter agent, when monitoring is on
            "-cp",
            f"{self.libs}/*",
            _MARKER,
            str(self.properties),
        ]
        # Where this start's lines begin: an error from an earlier life of the broker is not
        # the cause of this one's failure.
        self._since = {log: _size(log) for log in (self.logs / "server.log", self.console_log)}
        pid = spawn(argv, log=self.console_log, cwd=self.dir)
        self.pid_file.write_text(f"{pid}\n")
        return pid

    def ready(self) -> bool:
        """Whether the broker is up and answering; raises if it exited during start-up."""
        if self.process() is None:
            pid = read_pid(self.pid_file)
            if pid is not None and _alive(pid):  # forked, not yet the JVM we look for
                return False
            since = getattr(self, "_since", {})
            raise StackError(
                f"the Kafka broker {self.name} exited during start-up "
                f"({self._last_error(since)}); see {self.console_log}"
            )
        return self.healthy()

    def start(self) -> bool:
        """Start this broker unless it runs and wait until it answers (the others of its
        quorum must be up, or start meanwhile). True if it was started."""
        started = self.launch() is not None
        self.wait_ready()
        return started

    def wait_ready(self) -> None:
        wait_until(
            self.ready,
            timeout=self.settings.kafka_start_timeout,
            what=f"Kafka ({self.name})",
            log=self.logs / "server.log",
        )

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

    def kill(self) -> int | None:
        """kill -9 (a drill's fault): no controlled shutdown. The PID killed, or None."""
        proc = self.process()
        if proc is None:
            return None
        proc.kill()
        psutil.wait_procs([proc], timeout=30)
        return proc.pid

    def status(self) -> ComponentStatus:
        proc = self.process()
        address = f"{self.settings.kafka_host}:{self.client_port}"
        if proc is None:
            formatted = (self.data / "meta.properties").exists()
            detail = f"data in {self.data}" if formatted else "not formatted yet"
            return ComponentStatus(self.name, False, None, address, detail)
        detail = "healthy (TLS, SCRAM, ACLs)" if self.healthy() else "starting or unhealthy"
        if self.plaintext_port:
            detail += f"; WARNING: PLAINTEXT listener on port {self.plaintext_port}"
        return ComponentStatus(self.name, True, proc.pid, address, f"{detail}, data in {self.data}")


class KafkaCluster:
    """The stack's Kafka: `FLEETPULSE_KAFKA_BROKERS` nodes (one by default), started and
    stopped together."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.nodes = [KafkaNode(settings, n) for n in range(1, settings.kafka_brokers + 1)]
        first = self.nodes[0]
        self.dir, self.libs = first.dir, first.libs
        self._count_file = first.dir / "brokers"
        #: The nodes the last `start()` started (the others were running).
        self.launched: list[KafkaNode] = []

    def node(self, n: int) -> KafkaNode:
        return self.nodes[n - 1]

    def install(self) -> None:
        self.nodes[0].install()

    def java(self) -> str:
        return self.nodes[0].java()

    def tls(self) -> BrokerTls:
        return self.nodes[0].tls()

    def internal_ssl_context(self) -> ssl.SSLContext:
        return self.nodes[0].internal_ssl_context()

    @property
    def internal_bootstrap(self) -> str:
        return ",".join(n.internal_bootstrap for n in self.nodes)

    def _check_size(self) -> None:
        """A cluster keeps the number of brokers it was formatted with: its quorum's voters
        and its topics' replicas are in its metadata."""
        wanted = self.settings.kafka_brokers
        formatted = (self.nodes[0].data / "meta.properties").exists()
        if not formatted:
            self._count_file.parent.mkdir(parents=True, exist_ok=True)
            self._count_file.write_text(f"{wanted}\n")
            return
        try:
            had = int(self._count_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            had = 1  # formatted before the count was recorded: a single broker
        if had != wanted:
            raise StackError(
                f"the Kafka cluster in {self.settings.home_dir} was formatted with {had} "
                f"broker(s), not {wanted}: run it with FLEETPULSE_KAFKA_BROKERS={had} (or "
                f"`--brokers {had}`), or start {wanted} in another FLEETPULSE_HOME; a cluster's "
                "size is fixed when it is formatted"
            )

    def process(self) -> psutil.Process | None:
        """The first running broker's process, or None if none runs."""
        return next((p for p in (n.process() for n in self.nodes) if p is not None), None)

    def start(self) -> bool:
        """Start every broker that is not running, together; wait until all are healthy.
        True if any was started."""
        self.install()
        self._check_size()
        self.launched = [n for n in self.nodes if n.launch() is not None]
        for node in self.nodes:
            node.wait_ready()
        return bool(self.launched)

    def stop(self) -> bool:
        """Stop every broker (SIGTERM: controlled shutdown). True if any was running."""
        # The last one standing has no quorum to shut down through: stop them in parallel.
        running = []
        for node in self.nodes:
            proc = node.process()
            if proc is None:
                node.pid_file.unlink(missing_ok=True)
                continue
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
            running.append((node, proc))
        for node, proc in running:
            stop_process(proc, timeout=60)
            node.pid_file.unlink(missing_ok=True)
        return bool(running)

    def healthy(self) -> bool:
        return all(n.healthy() for n in self.nodes)

    def rotate_certificate(self) -> bool:
        """Issue the brokers a new certificate from the CA and restart the running ones, one
        at a time (a broker reads its keystore at start; with three, the cluster stays up).
        Clients reconnect by themselves. True if any was restarted."""
        self.nodes[0]._install_tls(force=True)
        restarted = False
        for node in self.nodes:
            if node.process() is None:
                continue
            node.stop()
            node.start()
            restarted = True
        return restarted

    def status(self) -> list[ComponentStatus]:
        return [n.status() for n in self.nodes]


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


async def metadata_ok(bootstrap: str, **security: Any) -> bool:
    """Whether the brokers at `bootstrap` answer a metadata request from a client with the
    `security` options (aiokafka's): a login and an authorized request, within seconds."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, **security)
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
