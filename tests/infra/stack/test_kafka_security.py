"""Integration: on the real broker, each Kafka principal may do its role and nothing else, and
every refusal is an authorization error, not a timeout (infra/stack/kafka_security.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from infra.settings import StackSettings
from infra.stack.kafka_security import PRINCIPALS, KafkaSecurity, role_acls
from infra.stack.tls import issue
from runtime import kafka
from runtime.settings import KafkaSettings
from runtime.topics import create_topics
from schemas.topics import DLQ, RAW, STATUS, TopicSpec, aggregate_topics
from sinks.settings import SinkSettings
from streams.settings import StreamSettings

pytestmark = pytest.mark.integration

KCAT = str(Path(sys.prefix) / "bin" / "kcat")
AGG_5S = aggregate_topics()["5s"].name
#: A producer with no topic to write may not even begin (its idempotent producer id is
#: refused on the cluster).
REFUSED = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)


def _as(settings: StackSettings, principal: str, **update: object) -> KafkaSettings:
    return KafkaSettings(
        kafka_bootstrap=settings.kafka_bootstrap,
        home=settings.home,
        kafka_sasl_username=principal,
        kafka_request_timeout_ms=10_000,
        **update,  # type: ignore[arg-type]
    )


async def _write(settings: KafkaSettings, topic: str) -> None:
    producer = kafka.producer(settings, "acl-test")
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, b"{}", key=b"acl-test"), 20)
    finally:
        await producer.stop()


async def _read(settings: KafkaSettings, topic: str, group: str | None) -> None:
    """Join `group` (if any) on `topic` and fetch once; offsets are never committed."""
    consumer = kafka.consumer(settings, "acl-test", topic, group=group)
    try:
        await asyncio.wait_for(consumer.start(), 20)
        await asyncio.wait_for(consumer.getmany(timeout_ms=2000), 30)
    finally:
        await consumer.stop()


async def _refused(action: asyncio.Future[None] | object) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(REFUSED):
        await action  # type: ignore[misc]
    assert loop.time() - started < 15, "a refusal must come as an answer, not a timeout"


async def test_producer_writes_raw_only(stack_settings: StackSettings) -> None:
    producer = _as(stack_settings, "producer")
    await _write(producer, RAW.name)  # idempotent: the factories' producers are
    await _refused(_write(producer, AGG_5S))
    await _refused(_read(producer, AGG_5S, None))
    await _refused(_read(producer, RAW.name, None))


async def test_stream_reads_raw_in_its_group_and_writes_its_outputs(
    stack_settings: StackSettings,
) -> None:
    stream = _as(stack_settings, "stream")
    group = StreamSettings().stream_group
    await _read(stream, RAW.name, group)
    for topic in (AGG_5S, STATUS.name, DLQ.name):
        await _write(stream, topic)
    await _refused(_write(stream, RAW.name))
    await _refused(_read(stream, RAW.name, f"other-{uuid.uuid4().hex[:6]}"))


async def test_sink_reads_aggregates_and_writes_the_dlq_only(
    stack_settings: StackSettings,
) -> None:
    sink = _as(stack_settings, "sink")
    await _read(sink, AGG_5S, SinkSettings().sink_group)
    await _write(sink, DLQ.name)
    await _refused(_write(sink, RAW.name))
    await _refused(_write(sink, AGG_5S))
    await _refused(_read(sink, RAW.name, None))


async def test_registry_reads_status_only(stack_settings: StackSettings) -> None:
    registry = _as(stack_settings, "registry")
    await _read(registry, STATUS.name, "fleetpulse-registry")
    await _refused(_write(registry, STATUS.name))
    await _refused(_read(registry, AGG_5S, None))


@pytest.mark.parametrize("principal", [p for p in PRINCIPALS if p != "admin"])
async def test_nobody_but_admin_creates_topics(
    stack_settings: StackSettings, principal: str
) -> None:
    spec = TopicSpec(f"test.acl.{uuid.uuid4().hex[:8]}", 1, 60_000)
    with pytest.raises(TopicAuthorizationFailedError):
        await create_topics(_as(stack_settings, principal), [spec])
    (result,) = await create_topics(_as(stack_settings, "admin"), [spec])
    assert result.created


async def _cannot_connect(settings: KafkaSettings) -> None:
    admin = kafka.admin(settings, "acl-test")
    try:
        with pytest.raises(KafkaConnectionError):
            await asyncio.wait_for(admin.start(), 30)
    finally:
        await admin.close()


async def test_a_wrong_password_is_refused(
    stack_settings: StackSettings, caplog: pytest.LogCaptureFixture
) -> None:
    await _cannot_connect(_as(stack_settings, "producer", kafka_sasl_password="not-the-password"))
    assert "SaslAuthenticationFailed" in caplog.text
    assert "not-the-password" not in caplog.text


async def test_a_plaintext_client_is_refused(stack_settings: StackSettings) -> None:
    await _cannot_connect(_as(stack_settings, "admin", kafka_security_protocol="PLAINTEXT"))


async def test_a_client_trusting_another_ca_is_refused(
    stack_settings: StackSettings, tmp_path: Path
) -> None:
    issue(tmp_path, "other")  # makes another CA in tmp_path
    other = _as(stack_settings, "admin", kafka_ca_file=tmp_path / "ca.crt")
    await _cannot_connect(other)
    ctx = other.kafka_security()["ssl_context"]
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection((stack_settings.kafka_host, stack_settings.kafka_port), 10) as raw,
        ctx.wrap_socket(raw, server_hostname=stack_settings.kafka_host),
    ):
        pass


def _kcat(config: Path, *args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KCAT, "-F", str(config), *args],
        input=data,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_kcat_as_producer_writes_raw_and_may_not_read_aggregates(
    stack_settings: StackSettings,
) -> None:
    config = stack_settings.home_dir / "secrets" / "kafka" / "producer.conf"
    assert config.stat().st_mode & 0o077 == 0
    wrote = _kcat(config, "-P", "-t", RAW.name, "-k", "kcat-acl-test", data="{}\n")
    assert wrote.returncode == 0, wrote.stderr
    read = _kcat(config, "-C", "-t", AGG_5S, "-o", "beginning", "-e")
    assert read.returncode != 0 and "Topic authorization failed" in read.stderr


def test_kcat_without_credentials_is_refused(stack_settings: StackSettings) -> None:
    for protocol in ("plaintext", "ssl"):
        result = subprocess.run(
            [KCAT, "-b", stack_settings.kafka_bootstrap, "-L", "-m", "5", "-X",
             f"security.protocol={protocol}", "-X",
             f"ssl.ca.location={stack_settings.home_dir / 'tls' / 'ca.crt'}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode != 0


def test_every_role_has_its_acls_and_the_passwords_are_private(
    stack_settings: StackSettings,
) -> None:
    acls = role_acls()
    assert {a.principal for a in acls} == set(PRINCIPALS) - {"admin"}
    assert not any(a.operation in ("ALL", "CREATE", "ALTER", "DELETE") for a in acls)
    security = KafkaSecurity(stack_settings)
    for principal in PRINCIPALS:
        path = security.password_path(principal)
        assert path.stat().st_mode & 0o777 == 0o600
        assert len(path.read_text()) >= 32 and "\n" not in path.read_text()


async def test_a_rotated_password_is_used_from_the_next_connection(
    stack_settings: StackSettings, caplog: pytest.LogCaptureFixture
) -> None:
    security = KafkaSecurity(stack_settings)
    old = security.password_path("producer").read_text()
    before = _as(stack_settings, "producer")  # reads its file when it connects, not now
    await asyncio.to_thread(security.rotate, "producer")
    new = security.password_path("producer").read_text()
    assert new != old and len(new) >= 32
    await _write(before, RAW.name)
    await _cannot_connect(_as(stack_settings, "producer", kafka_sasl_password=old))
    conf = (security.secrets / "producer.conf").read_text()
    assert f"sasl.password={new}\n" in conf and old not in conf
    assert old not in caplog.text and new not in caplog.text


def test_no_generated_password_outside_the_secrets_folder(stack_settings: StackSettings) -> None:
    """The generated passwords (Kafka users, database roles) are only under <home>/secrets/:
    not in the stack's logs, data or configuration, not in any process's command line, not in
    the repository."""
    home = stack_settings.home_dir
    secrets = home / "secrets"
    passwords = {
        f.read_text().strip()
        for f in secrets.rglob("*")
        if f.is_file() and f.suffix != ".conf" and f.parent.name in ("kafka", "pg", "secrets")
        and len(f.read_text().strip()) >= 16
    }  # fmt: skip
    assert len(passwords) >= len(PRINCIPALS)
    patterns = home.parent / f".passwords-{uuid.uuid4().hex[:6]}"
    patterns.write_text("\n".join(passwords) + "\n")
    patterns.chmod(0o600)
    try:
        found = subprocess.run(
            ["grep", "-r", "-l", "-F", "-f", str(patterns), "--exclude-dir=secrets", str(home)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert found.returncode == 1, f"a password outside secrets/: {found.stdout[:500]}"
        repo = subprocess.run(
            ["git", "grep", "-l", "-F", "-f", str(patterns)],
            cwd=Path(__file__).resolve().parents[3],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert repo.returncode == 1, f"a password in the repository: {repo.stdout[:500]}"
    finally:
        patterns.unlink()
    commands = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    assert not [p for p in passwords if p in commands]
