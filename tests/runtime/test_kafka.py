"""Unit tests: the Kafka client factories take every tuning knob from the settings."""

from __future__ import annotations

from runtime import kafka
from runtime.settings import KafkaSettings

SETTINGS = KafkaSettings(
    kafka_bootstrap="127.0.0.1:9",  # never connected here
    kafka_security_protocol="PLAINTEXT",  # no TLS material needed
    kafka_client_id="fp-test",
    compression="zstd",
    linger_ms=17,
    kafka_max_batch_bytes=65536,
    kafka_fetch_max_bytes=2_000_000,
    kafka_partition_fetch_max_bytes=3_000_000,
    kafka_session_timeout_ms=12_000,
    kafka_heartbeat_interval_ms=1_500,
    kafka_request_timeout_ms=45_000,
)


async def test_producer_applies_the_settings() -> None:
    producer = kafka.producer(SETTINGS, "sink-dlq")
    try:
        acc = producer._message_accumulator
        assert producer.client._client_id == "fp-test-sink-dlq"
        assert producer._compression_type == "zstd"
        assert acc._linger_time == 0.017 and acc._batch_size == 65536
        assert producer._request_timeout_ms == 45_000
        assert producer._txn_manager is not None  # idempotent
        assert isinstance(producer._partitioner, kafka.KeyPartitioner)
    finally:
        await producer.stop()


async def test_no_compression_is_none() -> None:
    producer = kafka.producer(SETTINGS.model_copy(update={"compression": "none"}), "x")
    try:
        assert producer._compression_type is None
    finally:
        await producer.stop()


async def test_consumer_applies_the_settings() -> None:
    consumer = kafka.consumer(SETTINGS, "sink", "t.a", "t.b", group="g", max_poll_records=99)
    try:
        assert consumer._client._client_id == "fp-test-sink"
        assert consumer._group_id == "g" and consumer._enable_auto_commit is False
        assert consumer._auto_offset_reset == "earliest"
        assert consumer._fetch_max_bytes == 2_000_000 and consumer._max_poll_records == 99
        assert consumer._max_partition_fetch_bytes == 3_000_000
        assert consumer._session_timeout_ms == 12_000
        assert consumer._heartbeat_interval_ms == 1_500
        # A request outlives a session timeout (a join waits that long).
        assert consumer._request_timeout_ms == 45_000
        assert consumer.subscription() == {"t.a", "t.b"}
    finally:
        await consumer.stop()
