"""The local stack: a real Kafka cluster (one broker, or three) and a PostgreSQL 15 cluster
(WAL archived by pgBackRest) under `<home>/`, the registry's HTTPS certificate from the
stack's CA, and with `monitoring` on, Prometheus and the PostgreSQL exporter
(`infra/stack/monitoring.py`)."""

from __future__ import annotations

import asyncio
import fcntl
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from infra.settings import StackSettings
from infra.stack import monitoring
from infra.stack.kafka import KafkaCluster, KafkaNode
from infra.stack.kafka_security import PRINCIPALS, KafkaSecurity
from infra.stack.pgbackrest import PgBackRest
from infra.stack.postgres import PostgresCluster
from infra.stack.postgres import rotate_password as rotate_pg_password
from infra.stack.process import ComponentStatus, StackError
from infra.stack.tls import issue
from runtime.settings import OWNER_ROLE, SERVICE_ROLES

__all__ = [
    "ComponentStatus",
    "KafkaCluster",
    "KafkaNode",
    "PostgresCluster",
    "StackError",
    "down",
    "rotate_certs",
    "rotate_password",
    "status",
    "up",
]


@contextmanager
def _stack_lock(settings: StackSettings) -> Iterator[None]:
    """One `stack up`/`down` at a time, so two callers never start two brokers."""
    home = settings.home_dir
    home.mkdir(parents=True, exist_ok=True)
    with (home / "stack.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def up(settings: StackSettings) -> list[tuple[ComponentStatus, bool]]:
    """Start what is not running and wait until both are healthy; issue the registry's
    certificate (`<home>/tls/registry.crt`) when it is missing. With `settings.monitoring`:
    Prometheus and the PostgreSQL exporter too, and a running broker without the JMX exporter
    agent is restarted with it (clients reconnect by themselves, as after `rotate-certs`).

    Returns each component's status and whether this call started it.
    """
    with _stack_lock(settings):
        issue(settings.home_dir / "tls", "registry", hostnames=registry_hostnames(settings))
        started = []
        for component in (PostgresCluster(settings), KafkaCluster(settings)):
            was_started = component.start()
            if isinstance(component, PostgresCluster):
                pgbackrest = PgBackRest(settings, component)
                # Always: the archive_command names its files (a running cluster of an
                # earlier release was just reloaded with it).
                pgbackrest.write_config()
                if was_started or not pgbackrest.stanza_exists():
                    pgbackrest.ensure()
            if isinstance(component, KafkaCluster):
                restarted = set()
                for node in component.nodes:
                    proc = node.process()
                    if settings.monitoring and proc and not monitoring.broker_exports_metrics(proc):
                        node.stop()  # started again below, with the JMX exporter agent
                        node.start()
                        restarted.add(node.name)
                KafkaSecurity(settings, component).ensure()
                launched = {node.name for node in component.launched} | restarted
                started += [(st, st.name in launched) for st in component.status()]
            else:
                started.append((component.status(), was_started))
        if settings.monitoring:
            started += monitoring.up(settings)
        return started


def down(settings: StackSettings) -> list[tuple[str, bool]]:
    """Stop everything by PID (the monitoring first). Returns each component's name and
    whether it was running."""
    with _stack_lock(settings):
        return [
            *monitoring.down(settings),
            ("kafka", KafkaCluster(settings).stop()),
            ("postgres", PostgresCluster(settings).stop()),
        ]


def rotate_certs(settings: StackSettings) -> list[str]:
    """Issue the broker, the database and the registry new certificates from the stack's CA
    (clients trust the CA, so none of them needs a change). The broker restarts (it reads its
    keystore at start; clients reconnect and retry, nothing is lost), PostgreSQL reloads, a
    running registry picks its new certificate up by itself. Returns what was done."""
    with _stack_lock(settings):
        done = []
        restarted = KafkaCluster(settings).rotate_certificate()
        done.append(f"kafka     new certificate{', broker restarted' if restarted else ''}")
        reloaded = PostgresCluster(settings).rotate_certificate()
        done.append(f"postgres  new certificate{', server reloaded' if reloaded else ''}")
        names = registry_hostnames(settings)
        issue(settings.home_dir / "tls", "registry", hostnames=names, force=True)
        done.append("registry  new certificate (a running registry serves it to new connections)")
        return done


def rotate_password(settings: StackSettings, principal: str) -> str:
    """Give one Kafka user or PostgreSQL role a new password, on the server first and then in
    its file under `<home>/secrets/`: services reading that file use it from their next
    connection on. Returns what was rotated."""
    with _stack_lock(settings):
        if principal in PRINCIPALS:
            KafkaSecurity(settings).rotate(principal)
            return f"Kafka user {principal}"
        roles = (OWNER_ROLE, *SERVICE_ROLES)
        if principal in roles:
            asyncio.run(rotate_pg_password(settings, principal))
            return f"PostgreSQL role {principal}"
        raise StackError(
            f"no principal {principal!r}: Kafka users are {', '.join(PRINCIPALS)}; "
            f"PostgreSQL roles are {', '.join(roles)}"
        )


def registry_hostnames(settings: StackSettings) -> tuple[str, ...]:
    """The names the registry's certificate carries."""
    return ("localhost", *settings.tls_hostnames)


def status(settings: StackSettings) -> list[ComponentStatus]:
    """Each component; with more than one broker also the controller quorum and the
    under-replicated partitions (a row that is not `running` when there are any); the
    monitoring's processes when it is on."""
    kafka = KafkaCluster(settings)
    rows = [PostgresCluster(settings).status(), *kafka.status()]
    if len(kafka.nodes) > 1 and kafka.process() is not None:
        rows += cluster_health(settings, kafka)
    return [*rows, *monitoring.status(settings)]


def cluster_health(settings: StackSettings, kafka: KafkaCluster) -> list[ComponentStatus]:
    """The quorum's active controller and voters, and the partitions short of replicas."""
    try:
        q = KafkaSecurity(settings, kafka).describe()
    except StackError as exc:
        return [ComponentStatus("quorum", False, None, "", str(exc))]
    voters = ", ".join(f"{kafka.node(n).name} lag {lag}" for n, lag in sorted(q.voters.items()))
    leader = kafka.node(q.leader).name if 0 < q.leader <= len(kafka.nodes) else "none"
    rows = [ComponentStatus("quorum", q.leader > 0, None, f"leader {leader}", f"voters: {voters}")]
    under = q.under_replicated
    per_topic = Counter(line.split()[0] for line in under)
    detail = ", ".join(f"{topic}: {n}" for topic, n in sorted(per_topic.items())) or "none"
    count = f"{len(under)} partitions under-replicated"
    rows.append(ComponentStatus("replicas", not under, None, count, detail))
    return rows
