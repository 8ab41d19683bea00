"""Who may do what on the local broker: one SCRAM user per role, and their ACLs.

- `producer`: write the raw topic (idempotently: Kafka grants that with the write).
- `stream`: read the raw topic in its group; write the aggregate, status and DLQ topics; read
  and write its changelog.
- `sink`: read the aggregate topics in its group; write the DLQ, and read it (it counts the
  stream's late samples per window).
- `registry`: read the status topic in its group.
- `alerts`: read the aggregate and status topics in its group; write the alerts topic.
- `admin`: anything, a super user (topics, ACLs, the lag report, the stack's checks).

Everything else is refused: the broker's authorizer denies what no ACL allows. Topic and group
names are the services' settings as `fleetpulse stack up` sees them.

The users and ACLs are made through Kafka's Admin API by `infra/kafka/Security.java`, which
connects as the broker itself (mutual TLS), so it works on a broker with no user yet. Each
password is generated once into `<home>/secrets/kafka/<principal>` (mode 0600), next to a
client configuration for librdkafka tools such as kcat (`<principal>.conf`). Passwords go to
the tool on its standard input, never on a command line.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from alerts.settings import AlertsSettings
from infra.settings import StackSettings
from infra.stack.kafka import ADMIN, KafkaCluster, metadata_ok
from infra.stack.process import StackError, secret_file, wait_until
from registry.settings import RegistrySettings
from sinks.settings import SinkSettings
from streams.settings import StreamSettings

_RESOURCES = Path(__file__).resolve().parents[1] / "kafka"
PRINCIPALS = (ADMIN, "producer", "stream", "sink", "registry", "alerts")


@dataclass(frozen=True, order=True)
class Acl:
    """ALLOW `principal` `operation` on a resource."""

    principal: str
    resource: str  # TOPIC, GROUP, CLUSTER
    name: str
    operation: str  # READ, WRITE, DESCRIBE, ...
    pattern: str = "LITERAL"

    def line(self) -> str:
        return f"acl {self.principal} {self.resource} {self.pattern} {self.name} {self.operation}"


def role_acls() -> list[Acl]:
    """The ACLs of every role but admin, from the services' settings (read from the
    environment); the producers write the raw topic the stream reads."""
    stream, sink, registry = StreamSettings(), SinkSettings(), RegistrySettings()
    alerts = AlertsSettings()
    acls = [Acl("producer", "TOPIC", stream.raw_topic, "WRITE")]
    acls.append(Acl("stream", "TOPIC", stream.raw_topic, "READ"))
    acls.append(Acl("stream", "GROUP", stream.stream_group, "READ"))
    for topic in (*stream.agg_topics.values(), stream.status_topic, stream.dlq_topic):
        acls.append(Acl("stream", "TOPIC", topic, "WRITE"))
    acls += [Acl("stream", "TOPIC", stream.changelog_topic, op) for op in ("READ", "WRITE")]
    acls += [Acl("sink", "TOPIC", topic, "READ") for topic in sink.agg_topics.values()]
    acls.append(Acl("sink", "GROUP", sink.sink_group, "READ"))
    acls += [Acl("sink", "TOPIC", sink.dlq_topic, op) for op in ("READ", "WRITE")]
    acls.append(Acl("registry", "TOPIC", registry.status_topic, "READ"))
    acls.append(Acl("registry", "GROUP", registry.registry_group, "READ"))
    for topic in (*alerts.agg_topics.values(), alerts.status_topic):
        acls.append(Acl("alerts", "TOPIC", topic, "READ"))
    acls.append(Acl("alerts", "GROUP", alerts.alerts_group, "READ"))
    acls.append(Acl("alerts", "TOPIC", alerts.alerts_topic, "WRITE"))
    return sorted(set(acls))


@dataclass
class Quorum:
    """What `describe` found: the active controller (`leader`), each voter's lag behind it
    in metadata records, and the partitions with fewer in-sync replicas than replicas."""

    leader: int
    epoch: int
    voters: dict[int, int] = field(default_factory=dict)
    under_replicated: list[str] = field(default_factory=list)


class KafkaSecurity:
    """The local broker's users, passwords and ACLs."""

    def __init__(self, settings: StackSettings, broker: KafkaCluster | None = None) -> None:
        self.settings = settings
        self.broker = broker or KafkaCluster(settings)
        self.secrets = settings.home_dir / "secrets" / "kafka"
        self._stamp = self.broker.dir / "security.sha256"

    def password_path(self, principal: str) -> Path:
        return self.secrets / principal

    def password(self, principal: str) -> str:
        """`principal`'s password, generated once."""
        return secret_file(self.password_path(principal))

    def client_config(self, principal: str) -> Path:
        """`<principal>.conf`: what a librdkafka client (`kcat -F`) needs to connect as
        `principal` (mode 0600, next to the password it holds)."""
        path = self.secrets / f"{principal}.conf"
        s = self.settings
        text = (
            f"# {principal} on the local broker: `kcat -F {path} ...`\n"
            f"bootstrap.servers={s.kafka_bootstrap}\n"
            "security.protocol=SASL_SSL\n"
            "sasl.mechanisms=SCRAM-SHA-512\n"
            f"sasl.username={principal}\n"
            f"sasl.password={self.password(principal)}\n"
            f"ssl.ca.location={self.broker.tls().ca}\n"
        )
        _write_private(path, text)
        return path

    def ensure(self) -> list[str]:
        """Create missing users and make the ACLs what `role_acls` says (removing other
        grants of those principals); wait until the broker knows them. Skipped when nothing
        changed since the last run on this storage. Returns what changed."""
        lines = [f"user {p} {self.password(p)}" for p in PRINCIPALS]
        lines += [acl.line() for acl in role_acls()]
        lines += [f"sync {p}" for p in PRINCIPALS if p != ADMIN]
        for principal in PRINCIPALS:
            self.client_config(principal)
        cluster_id = (self.broker.dir / "cluster.id").read_text().strip()
        stamp = hashlib.sha256("\n".join([cluster_id, *lines]).encode()).hexdigest()
        if self._stamp.exists() and self._stamp.read_text() == stamp:
            return []
        said = self._run(lines)
        self._wait_for_login(ADMIN)
        self._stamp.write_text(stamp)
        return said

    def rotate(self, principal: str) -> None:
        """Give `principal` a new password: first on the broker, then in its file (clients
        that read the file at their next connection get the new one)."""
        if principal not in PRINCIPALS:
            raise StackError(
                f"no Kafka principal {principal!r}; the principals are {', '.join(PRINCIPALS)}"
            )
        new = secrets.token_urlsafe(24)
        self._run([f"password {principal} {new}"])
        _write_private(self.password_path(principal), new)
        self.client_config(principal)
        self._wait_for_login(principal)

    def describe(self) -> Quorum:
        """The controller quorum and the under-replicated partitions, from the cluster."""
        quorum = Quorum(leader=-1, epoch=-1)
        for line in self._run(["describe"], what="describing the Kafka cluster"):
            f = line.split()
            if f[0] == "leader":
                quorum.leader, quorum.epoch = int(f[1]), int(f[3])
            elif f[0] == "voter":
                quorum.voters[int(f[1])] = int(f[3])
            elif f[0] == "under-replicated":
                quorum.under_replicated.append(" ".join(f[1:]))
        return quorum

    def _run(self, lines: list[str], what: str = "setting the Kafka users and ACLs") -> list[str]:
        broker = self.broker
        tls = broker.tls()
        config = broker.dir / "tls" / "tools.properties"
        config.write_text(
            "# The stack's Kafka tools connect as the broker itself (no secret here).\n"
            f"bootstrap.servers={broker.internal_bootstrap}\n"
            "security.protocol=SSL\n"
            "ssl.keystore.type=PEM\n"
            f"ssl.keystore.location={tls.keystore}\n"
            "ssl.truststore.type=PEM\n"
            f"ssl.truststore.location={tls.ca}\n"
            "request.timeout.ms=30000\n"
        )
        argv = [
            broker.java(),
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={_RESOURCES / 'tools-log4j2.xml'}",
            "-cp",
            f"{broker.libs}/*",
            str(_RESOURCES / "Security.java"),
            str(config),
        ]
        try:
            result = subprocess.run(
                argv,
                input="\n".join(lines) + "\n",
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StackError(f"{what} timed out after 180 s") from None
        if result.returncode != 0:
            detail = result.stderr.strip().splitlines()[-3:] or ["no output"]
            raise StackError(f"{what} failed: {' / '.join(detail)}")
        return result.stdout.splitlines()

    def _wait_for_login(self, principal: str) -> None:
        """Wait until `principal` can log in: a new SCRAM credential reaches the broker's
        metadata a moment after the controller accepted it."""
        settings = self.settings.model_copy(
            update={"kafka_sasl_username": principal, "kafka_sasl_password_file": None}
        )

        def can_login() -> bool:
            return asyncio.run(metadata_ok(settings.kafka_bootstrap, **settings.kafka_security()))

        wait_until(can_login, timeout=60, what=f"Kafka login as {principal}")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)
