"""The fleet simulator: reproducible, realistic, always valid events; a time-lapse paced by
the broker."""

from __future__ import annotations

import collections
import itertools
import json
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.settings import StackSettings
from producers import SimulatorSettings
from producers.simulator import (
    SimulatedHost,
    Simulator,
    fleet,
    simulated_server_id,
    tick_events,
)
from schemas import decode_raw_event
from schemas.topics import TopicSpec
from tests.kafka import read_all

T0 = 1_795_600_000


def test_same_seed_same_series_different_seed_different() -> None:
    a = list(tick_events(fleet(7, 50, 3), T0))
    b = list(tick_events(fleet(7, 50, 3), T0))
    c = list(tick_events(fleet(8, 50, 3), T0))
    assert a == b
    assert [v for _, v in a] != [v for _, v in c]
    assert simulated_server_id(7, 3) == simulated_server_id(7, 3) != simulated_server_id(8, 3)
    assert len({sid for sid, _ in a}) == 50


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), t=st.integers(T0 - 10**8, T0 + 10**8))
def test_every_event_validates(seed: int, t: int) -> None:
    for sid, value in tick_events(fleet(seed, 20, 5), t):
        event = decode_raw_event(value)
        assert event.server_id == sid
        assert int(event.timestamp.timestamp()) == t
        assert len(event.processes) == 5


def test_series_look_like_hosts() -> None:
    host = SimulatedHost.create(42, 0, 0)
    cpus = [host.values(T0 + s)[0] for s in range(3600)]
    mems = [host.values(T0 + s)[1] for s in range(3600)]
    # CPU varies second to second but stays in range; memory moves slowly.
    assert 0 <= min(cpus) < max(cpus) <= 100
    assert max(abs(a - b) for a, b in itertools.pairwise(mems)) < 2.5
    rx = [host.values(T0 + s)[3] for s in range(60)]
    assert all(r >= 0 for r in rx) and len(set(rx)) > 30


def test_generation_is_fast_enough_for_20k_hosts() -> None:
    # A smoke check of the order of magnitude; the measured figure is in BENCHMARKS.md.
    hosts = fleet(1, 2000, 3)
    start = time.process_time()
    events = list(tick_events(hosts, T0))
    assert len(events) == 2000
    assert time.process_time() - start < 2.0
    assert json.loads(events[0][1])["server_id"] == hosts[0].server_id


@pytest.mark.integration
async def test_a_time_lapse_faster_than_the_broker_waits_for_it_and_drops_nothing(
    stack_settings: StackSettings, new_topic: TopicSpec
) -> None:
    """A replayed history far faster than Kafka takes it, through a buffer of two seconds'
    events: every simulated second arrives whole, none dropped."""
    hosts, seconds = 200, 40
    settings = SimulatorSettings(
        kafka_bootstrap=stack_settings.kafka_bootstrap,
        raw_topic=new_topic.name,
        hosts=hosts,
        buffer_size=2 * hosts,
        sim_start=datetime.fromtimestamp(T0, UTC),
        sim_speed=100_000,
    )
    simulator = Simulator(settings)
    await simulator.start()
    try:
        stats = await simulator.emit(seconds)
        assert await simulator.producer.flush(60)
    finally:
        await simulator.producer.stop()
    assert stats.events == hosts * seconds and simulator.producer.stats.dropped == 0
    records = await read_all(stack_settings.kafka_bootstrap, new_topic.name, hosts * seconds)
    stamps = collections.Counter(decode_raw_event(v).timestamp.timestamp() for _, v in records)
    assert stamps == {float(T0 + s): hosts for s in range(seconds)}


async def test_a_silent_host_sends_nothing_for_its_span_then_again(
    stack_settings: StackSettings, new_topic: TopicSpec
) -> None:
    """The demo's silent host: nothing of it from 5 s in, for 10 s; the others carry on."""
    settings = SimulatorSettings(
        kafka_bootstrap=stack_settings.kafka_bootstrap,
        raw_topic=new_topic.name,
        hosts=3,
        sim_start=datetime.fromtimestamp(T0, UTC),
        sim_speed=100_000,
        sim_silent_host=1,
        sim_silent_after=5,
        sim_silent_for=10,
    )
    simulator = Simulator(settings)
    await simulator.start()
    try:
        stats = await simulator.emit(20)
        assert await simulator.producer.flush(60)
    finally:
        await simulator.producer.stop()
    assert stats.events == 3 * 20 - 10
    records = await read_all(stack_settings.kafka_bootstrap, new_topic.name, stats.events)
    silent = simulated_server_id(settings.seed, 1)
    seconds = sorted(
        int(e.timestamp.timestamp()) - T0
        for e in (decode_raw_event(v) for _, v in records)
        if e.server_id == silent
    )
    assert seconds == [*range(5), *range(15, 20)]
