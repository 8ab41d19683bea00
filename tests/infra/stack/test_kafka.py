"""Integration: produce and consume through the real broker with aiokafka, and with kcat."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from infra.settings import StackSettings
from infra.stack.kafka import KafkaCluster, KafkaNode, new_cluster_id
from infra.stack.process import StackError
from schemas import RawMetricEvent, decode_raw_event
from schemas.topics import TopicSpec
from tests.factories import event_dict
from tests.kafka import SECURITY

pytestmark = pytest.mark.integration
#: Debian's kcat with a librdkafka that can log in to Kafka 4 (infra/kcat.py).
KCAT = str(Path(sys.prefix) / "bin" / "kcat")


def _events(server_ids: list[str], n: int) -> list[RawMetricEvent]:
    t0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    return [
        RawMetricEvent(
            server_id=sid,
            timestamp=t0 + timedelta(seconds=i),
            cpu_usage=float(i % 100),
            memory_usage=50.0,
            disk_usage=60.0,
            network_rx=i,
            network_tx=2 * i,
        )
        for i in range(n)
        for sid in server_ids
    ]


async def _consume(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **SECURITY,
    )
    await consumer.start()
    got: list[tuple[bytes, bytes]] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < expected:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    got.extend((r.key, r.value) for r in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def test_produce_and_consume_keeps_per_server_order(
    kafka_bootstrap: str, new_topic: TopicSpec
) -> None:
    servers = [str(uuid.uuid4()) for _ in range(5)]
    sent = _events(servers, 40)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True, **SECURITY
    )
    await producer.start()
    try:
        futures = [
            await producer.send(new_topic.name, e.to_json_bytes(), key=e.server_id.encode())
            for e in sent
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()

    got = await _consume(kafka_bootstrap, new_topic.name, len(sent))
    assert len(got) == len(sent)
    received = [RawMetricEvent.model_validate_json(v) for _, v in got]
    assert sorted(received, key=lambda e: (e.server_id, e.timestamp)) == sorted(
        sent, key=lambda e: (e.server_id, e.timestamp)
    )
    for sid in servers:  # keyed by server_id: one partition per server, so in order
        mine = [e.timestamp for e in received if e.server_id == sid]
        assert mine == sorted(mine) and len(mine) == 40


async def test_broker_refuses_automatic_topic_creation(kafka_bootstrap: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, request_timeout_ms=3000, **SECURITY
    )
    await producer.start()
    try:
        with pytest.raises(Exception):  # noqa: B017 - aiokafka raises a timeout/unknown-topic error
            await asyncio.wait_for(producer.send_and_wait(f"nope.{uuid.uuid4().hex}", b"x"), 10)
    finally:
        await producer.stop()


async def test_kcat_produces_and_consumes(
    stack_settings: StackSettings, kafka_bootstrap: str, new_topic: TopicSpec
) -> None:
    """A stock Kafka client (kcat, librdkafka) talks to the broker, over TLS as a SCRAM user
    (the stack's client configuration for it), and the JSON contract."""
    kcat = [KCAT, "-F", str(stack_settings.home_dir / "secrets" / "kafka" / "admin.conf")]
    event = event_dict(server_id=str(uuid.uuid4()))
    line = f"{event['server_id']}\t{json.dumps(event)}\n"
    await asyncio.to_thread(
        subprocess.run,
        [*kcat, "-P", "-t", new_topic.name, "-K", "\t"],
        input=line.encode(),
        check=True,
        timeout=30,
    )
    got = await _consume(kafka_bootstrap, new_topic.name, 1)
    assert got[0][0] == event["server_id"].encode()
    assert decode_raw_event(got[0][1]).server_id == event["server_id"]

    result = await asyncio.to_thread(
        subprocess.run,
        [*kcat, "-C", "-t", new_topic.name, "-o", "beginning", "-e", "-J"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    records = [json.loads(x) for x in result.stdout.decode().splitlines() if x.strip()]
    assert len(records) == 1 and records[0]["key"] == event["server_id"]
    assert json.loads(records[0]["payload"])["cpu_usage"] == event["cpu_usage"]


def test_cluster_ids_are_16_bytes_and_never_start_with_a_dash() -> None:
    # One random id in 64 would start with "-"; a few thousand draws meet many such.
    ids = [new_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)


def _properties(tmp_path: Path, **settings: object) -> str:
    broker = KafkaNode(StackSettings(home=tmp_path, **settings))  # type: ignore[arg-type]
    broker._write_config()
    return broker.properties.read_text()


def test_no_plaintext_listener_unless_asked_and_then_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secure = _properties(tmp_path / "a")
    listeners = next(line for line in secure.splitlines() if line.startswith("listeners="))
    assert "PLAINTEXT://" not in listeners
    assert "listener.security.protocol.map=CLIENT:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL" in secure
    assert "allow.everyone.if.no.acl.found=false" in secure
    assert "User:ANONYMOUS" not in secure
    assert "listener.name.controller.ssl.client.auth=required" in secure
    assert not caplog.records

    opened = _properties(tmp_path / "b", kafka_plaintext_port=19195)
    assert "PLAINTEXT://127.0.0.1:19195" in opened and "PLAINTEXT:PLAINTEXT" in opened
    assert "User:ANONYMOUS" in opened  # what the setting asks for: anyone may do anything
    assert "PLAINTEXT listener on 127.0.0.1:19195" in caplog.text
    assert caplog.records[-1].levelname == "WARNING"


def _local(home: Path, **settings: object) -> StackSettings:
    """The dev stack's ports whatever the test session's variables say."""
    ports = {
        "kafka_bootstrap": "127.0.0.1:19092",
        "kafka_controller_port": 19093,
        "kafka_internal_port": 19094,
        "kafka_proxied_port": 0,
        "kafka_proxy_port": 0,
    }
    return StackSettings(home=home, **(ports | settings))  # type: ignore[arg-type]


def test_three_brokers_each_have_their_ports_folder_and_one_quorum(tmp_path: Path) -> None:
    settings = _local(tmp_path, kafka_brokers=3)
    assert settings.kafka_bootstrap == "127.0.0.1:19092,127.0.0.1:19102,127.0.0.1:19112"
    texts = []
    for n in (1, 2, 3):
        node = KafkaNode(settings, n)
        node._write_config()
        texts.append(node.properties.read_text())
    voters = "controller.quorum.voters=1@127.0.0.1:19093,2@127.0.0.1:19103,3@127.0.0.1:19113"
    for n, text in enumerate(texts, start=1):
        assert f"node.id={n}" in text and voters in text
        step = (n - 1) * 10
        assert f"CLIENT://127.0.0.1:{19092 + step}" in text
        assert f"INTERNAL://127.0.0.1:{19094 + step}" in text
        assert f"CONTROLLER://127.0.0.1:{19093 + step}" in text
        for line in ("offsets.topic.replication.factor=3", "transaction.state.log.min.isr=2"):
            assert line in text
        assert "min.insync.replicas=2" in text and "default.replication.factor=3" in text
    assert KafkaNode(settings, 1).dir == tmp_path / "kafka"
    assert KafkaNode(settings, 3).dir == tmp_path / "kafka-3"
    assert KafkaNode(settings, 3).libs == tmp_path / "kafka" / "libs"  # the jars are shared


def test_one_broker_replicates_nothing_and_says_so_nowhere_else(tmp_path: Path) -> None:
    settings = _local(tmp_path)
    assert settings.kafka_brokers == 1 and settings.kafka_bootstrap == "127.0.0.1:19092"
    assert (settings.kafka_replication_factor, settings.kafka_min_insync) == (1, 1)
    node = KafkaNode(settings)
    node._write_config()
    text = node.properties.read_text()
    assert "controller.quorum.voters=1@127.0.0.1:19093" in text
    assert "offsets.topic.replication.factor=1" in text and "min.insync.replicas=1" in text


def test_the_broker_count_comes_from_the_formatted_cluster_unless_set(tmp_path: Path) -> None:
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "brokers").write_text("3\n")
    assert _local(tmp_path).kafka_brokers == 3
    assert _local(tmp_path).kafka_replication_factor == 3
    assert _local(tmp_path, kafka_brokers=1).kafka_brokers == 1
    explicit = "10.0.0.1:9092,10.0.0.2:9092,10.0.0.3:9092"
    assert _local(tmp_path, kafka_bootstrap=explicit).kafka_bootstrap == explicit
    with pytest.raises(ValueError, match="PROXIED_PORT needs a single broker"):
        _local(tmp_path, kafka_proxied_port=1, kafka_proxy_port=2)
    assert _local(tmp_path, kafka_brokers=1, kafka_proxied_port=1, kafka_proxy_port=2)


def test_a_cluster_keeps_the_size_it_was_formatted_with(tmp_path: Path) -> None:
    data = tmp_path / "kafka" / "data"
    data.mkdir(parents=True)
    (data / "meta.properties").write_text("node.id=1\n")  # formatted, before counts were kept
    cluster = KafkaCluster(_local(tmp_path, kafka_brokers=3))
    with pytest.raises(StackError, match="formatted with 1 broker"):
        cluster._check_size()
