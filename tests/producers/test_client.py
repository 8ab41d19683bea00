"""Unit tests of the producer library that need no broker: validation and the buffer."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from producers import InvalidEvent, MetricProducer, ProducerSettings
from tests.factories import SERVER_ID, event_dict


def _unreachable(buffer_size: int) -> ProducerSettings:
    # Never started here, so nothing is sent; the bootstrap address is never used.
    return ProducerSettings(kafka_bootstrap="127.0.0.1:9", buffer_size=buffer_size)


def test_invalid_event_names_the_field() -> None:
    producer = MetricProducer(_unreachable(10))
    with pytest.raises(InvalidEvent, match=r"cpu_usage: Input should be less than or equal to 100"):
        producer.send(event_dict(cpu_usage=150))
    with pytest.raises(InvalidEvent, match=r"network_rx"):
        producer.send(event_dict(network_rx=-1))
    with pytest.raises(InvalidEvent, match=r"not JSON-serialisable"):
        producer.send(event_dict(cpu_usage=object()))
    assert producer.stats.accepted == 0


def test_datetimes_and_models_are_accepted() -> None:
    producer = MetricProducer(_unreachable(10))
    producer.send(event_dict(timestamp=datetime(2026, 11, 25, tzinfo=UTC)))
    with pytest.raises(InvalidEvent, match="timestamp"):
        producer.send(event_dict(timestamp=datetime(2026, 11, 25)))  # naive
    assert producer.stats.accepted == 1 and producer.stats.buffered == 1


def test_overflow_drops_the_oldest_and_counts_exactly() -> None:
    producer = MetricProducer(_unreachable(5))
    for i in range(23):
        producer.send_encoded(SERVER_ID, b"%d" % i)
    stats = producer.stats
    assert (stats.accepted, stats.dropped, stats.buffered) == (23, 18, 5)
    assert [r.value for r in producer._buffer] == [b"18", b"19", b"20", b"21", b"22"]
