"""Integration: `fleetpulse stream` on a 4-partition raw topic of its own, real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import types
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

import streams.app
from runtime.settings import KafkaSettings
from runtime.topics import create_topics
from schemas import DeadLetter, ServerStatusChange, WindowAggregate
from schemas.topics import TopicSpec
from streams.app import StreamWorker
from streams.settings import StreamSettings
from tests.factories import event_dict
from tests.kafka import SECURITY, produce, records_in
from tests.streams.worker import (
    Topics,
    by_window,
    collect,
    expected_windows,
    fleet_events,
    start_worker,
    stop_worker,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)  # an hour boundary, well in the past
A, B = str(uuid.uuid4()), str(uuid.uuid4())


@pytest.fixture
async def topics(kafka_bootstrap: str) -> AsyncIterator[Topics]:
    s = uuid.uuid4().hex[:8]
    t = Topics(f"t.raw.{s}", f"t.a5.{s}", f"t.a1h.{s}", f"t.a1d.{s}", f"t.st.{s}", f"t.dlq.{s}")
    await create_topics(
        KafkaSettings(kafka_bootstrap=kafka_bootstrap),
        [TopicSpec(n, 4, 3_600_000) for n in vars(t).values()],
    )
    yield t


def event(server: str, second: float, cpu: float) -> bytes:
    ts = (T0 + timedelta(seconds=second)).isoformat()
    return json.dumps(
        event_dict(server_id=server, timestamp=ts, cpu_usage=cpu, network_rx=10)
    ).encode()


def scripted() -> list[tuple[bytes, bytes]]:
    """A: seconds 0-59 with a gap at 20-29, then a late event; B: 0-14 with 7 sent after 9.

    Records are in the order the hosts would send them (both at 1 Hz), so A and B may share a
    partition: each is judged by its own event time.
    """
    timed: list[tuple[float, bytes, bytes]] = []
    for i in range(60):
        if not 20 <= i < 30:
            timed.append((i, A.encode(), event(A, i, float(i))))
    # 38 s behind A, its window closed long ago: beyond the test's 30 s horizon, late.
    timed.append((40.5, A.encode(), event(A, 2.5, 99.0)))
    # 17 s behind A: within the horizon, a correction of [30, 35).
    timed.append((50.5, A.encode(), event(A, 33.5, 1.0)))
    b_order = [0, 1, 2, 3, 4, 5, 6, 8, 9, 7, 10, 11, 12, 13, 14]
    timed += [(sent + 0.1, B.encode(), event(B, i, 50.0 + i)) for sent, i in enumerate(b_order)]
    recs = [(key, value) for _, key, value in sorted(timed, key=lambda r: r[0])]
    recs.append((b"junk", b"{not json"))
    recs.append((b"junk", b" " * (70 * 1024)))
    return recs


async def test_worker_windows_dead_letters_and_status(kafka_bootstrap: str, topics: Topics) -> None:
    await produce(kafka_bootstrap, topics.raw, scripted())
    group = f"test-{uuid.uuid4().hex[:8]}"
    proc = await start_worker(kafka_bootstrap, topics, group, lateness_horizon="30")
    try:
        fives = [
            WindowAggregate.model_validate_json(v)
            for v in await collect(kafka_bootstrap, topics.a5, 14)
        ]
        hours = [
            WindowAggregate.model_validate_json(v)
            for v in await collect(kafka_bootstrap, topics.a1h, 2)
        ]
        days = [
            WindowAggregate.model_validate_json(v)
            for v in await collect(kafka_bootstrap, topics.a1d, 2)
        ]
        letters = [
            DeadLetter.model_validate_json(v) for v in await collect(kafka_bootstrap, topics.dlq, 3)
        ]
        statuses = [
            ServerStatusChange.model_validate_json(v)
            for v in await collect(kafka_bootstrap, topics.status, 4)
        ]
    except TimeoutError:
        log = await stop_worker(proc)
        pytest.fail(f"the worker did not emit what was expected; its log:\n{log[-4000:]}")
    finally:
        log = await stop_worker(proc)
    assert proc.returncode == 0, log[-3000:]

    a5 = sorted(
        (f for f in by_window([f.to_json_bytes() for f in fives]).values() if f.server_id == A),
        key=lambda f: f.window_start,
    )
    assert [int((f.window_start - T0).total_seconds()) for f in a5] == [
        0,
        5,
        10,
        15,
        30,
        35,
        40,
        45,
        50,
        55,
    ]
    assert [f.count for f in a5] == [5, 5, 5, 5, 6, 5, 5, 5, 5, 5]
    corrected = a5[4]
    assert (corrected.revision, corrected.cpu_usage.min, corrected.cpu_usage.last) == (1, 1.0, 34.0)
    assert a5[1].cpu_usage.avg == 7.0 and a5[1].cpu_usage.last == 9.0
    assert a5[0].network_rx == 50
    b5 = sorted((f for f in fives if f.server_id == B), key=lambda f: f.window_start)
    assert [(f.count, f.cpu_usage.avg, f.cpu_usage.last) for f in b5] == [
        (5, 52.0, 54.0),
        (5, 57.0, 59.0),  # 7 arrived after 9, within grace: kept; last is second 9
        (5, 62.0, 64.0),
    ]
    assert len(fives) == 14  # each window once, and the corrected one again

    by_server = {h.server_id: h for h in hours}
    assert by_server[A].count == 51 and by_server[A].cpu_usage.avg == pytest.approx(
        (sum(i for i in range(60) if not 20 <= i < 30) + 1.0) / 51
    )
    assert by_server[B].count == 15 and len(hours) == 2
    assert {d.server_id: d.count for d in days} == {A: 51, B: 15}

    assert sorted(d.reason.value for d in letters) == ["invalid_json", "late", "oversize"]
    late = next(d for d in letters if d.reason.value == "late")
    assert json.loads(late.payload())["cpu_usage"] == 99.0

    seen = {(s.server_id, s.status.value) for s in statuses}
    assert {(A, "online"), (B, "online"), (A, "offline"), (B, "offline")} <= seen
    off_a = next(s for s in statuses if s.server_id == A and s.status.value == "offline")
    assert off_a.last_event_at == T0 + timedelta(seconds=59)


def summary(
    windows: dict[tuple[str, datetime], WindowAggregate],
) -> dict[tuple[str, datetime], tuple[object, ...]]:
    return {
        k: (
            w.count,
            pytest.approx(w.cpu_usage.avg),
            w.cpu_usage.min,
            w.cpu_usage.max,
            w.network_rx,
        )
        for k, w in windows.items()
    }


async def test_kill_9_and_restart_gives_the_uninterrupted_aggregates(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """Kill -9 in the middle of 5 s, hourly and daily windows: after a restart every window
    is there with the numbers of an uninterrupted run (hourly/daily from the changelog)."""
    # 30 s before the next midnight: the events span an hour and a day boundary. Event time
    # runs ahead of the clock, which changes nothing: closing follows event time.
    midnight = datetime.fromtimestamp((int(time.time()) // 86400 + 1) * 86400, UTC)
    t0 = midnight - timedelta(seconds=30)
    servers = [str(uuid.uuid4()) for _ in range(3)]
    group = f"test-crash-{uuid.uuid4().hex[:8]}"
    await produce(kafka_bootstrap, topics.raw, fleet_events(servers, t0, range(30)))
    first = await start_worker(kafka_bootstrap, topics, group)
    try:
        await collect(kafka_bootstrap, topics.a5, 8, timeout=60)  # some windows are out
        await asyncio.sleep(2.5)  # and a checkpoint of the open hour and day is written
    finally:
        first.kill()  # SIGKILL: no flush, no commit, no goodbye to the group
        await first.wait()
    # The rest arrives while the worker is down; one event at 200 s closes what precedes.
    rest = fleet_events(servers, t0, range(30, 60)) + fleet_events(servers, t0, [200])
    await produce(kafka_bootstrap, topics.raw, rest)
    second = await start_worker(kafka_bootstrap, topics, group)
    try:
        fives = by_window(await collect(kafka_bootstrap, topics.a5, 36, timeout=120, distinct=True))
        hours = by_window(await collect(kafka_bootstrap, topics.a1h, 3, timeout=30))
        days = by_window(await collect(kafka_bootstrap, topics.a1d, 3, timeout=30))
    except TimeoutError:
        log = await stop_worker(second)
        pytest.fail(f"windows missing after the restart; worker log:\n{log[-5000:]}")
    finally:
        await stop_worker(second)
    seconds = list(range(60))
    assert summary(fives) == expected_windows(servers, t0, seconds, 5)
    before_midnight = list(range(30))
    assert summary(hours) == expected_windows(servers, t0, before_midnight, 3600)
    assert summary(days) == expected_windows(servers, t0, before_midnight, 86400)


async def test_second_worker_joining_and_leaving_loses_nothing(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """Live events at 1 Hz; a second worker joins, later the first leaves (SIGTERM) and the
    second is killed -9 while a third takes over: every window is exact, repeats identical."""
    servers = [str(uuid.uuid4()) for _ in range(12)]
    t0 = datetime.fromtimestamp(int(time.time()) + 1, UTC)
    group = f"test-scale-{uuid.uuid4().hex[:8]}"
    duration = 36

    async def hosts() -> None:
        for i in range(duration):
            await produce(kafka_bootstrap, topics.raw, fleet_events(servers, t0, [i]))
            await asyncio.sleep(max(0.0, (t0 + timedelta(seconds=i + 1)).timestamp() - time.time()))

    sending = asyncio.create_task(hosts())
    workers = [await start_worker(kafka_bootstrap, topics, group)]
    try:
        await asyncio.sleep(8)
        workers.append(await start_worker(kafka_bootstrap, topics, group))  # joins
        await asyncio.sleep(10)
        await stop_worker(workers[0])  # leaves cleanly
        await asyncio.sleep(4)
        workers.append(await start_worker(kafka_bootstrap, topics, group))  # joins
        await asyncio.sleep(6)
        workers[1].kill()  # leaves abruptly
        await sending
        # All 5 s windows, closed by event time or, at the end, by the idle clock.
        fives = by_window(
            await collect(kafka_bootstrap, topics.a5, 12 * (duration + 4) // 5, 120, distinct=True)
        )
    except TimeoutError:
        log = await stop_worker(workers[-1])
        pytest.fail(f"windows missing; last worker's log:\n{log[-5000:]}")
    finally:
        sending.cancel()
        for w in workers:
            if w.returncode is None:
                await stop_worker(w)
    assert summary(fives) == expected_windows(servers, t0, list(range(duration)), 5)


async def test_ten_minute_backlog_after_downtime_equals_live(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """Live for a few seconds, the worker stops, ten minutes of events pile up, the worker
    restarts: the windows are exactly those of processing every event live."""
    servers = [str(uuid.uuid4()) for _ in range(3)]
    t0 = datetime.fromtimestamp(int(time.time()) // 5 * 5 + 5, UTC)
    group = f"test-backlog-{uuid.uuid4().hex[:8]}"
    live = 8
    worker = await start_worker(kafka_bootstrap, topics, group)
    try:
        for i in range(live):
            await produce(kafka_bootstrap, topics.raw, fleet_events(servers, t0, [i]))
            await asyncio.sleep(max(0.0, (t0 + timedelta(seconds=i + 1)).timestamp() - time.time()))
    finally:
        log = await stop_worker(worker)
    assert worker.returncode == 0, log[-3000:]
    # The next ten minutes of the hosts, written while the worker is down (time compressed:
    # the backlog runs ahead of the clock, which closing by event time does not look at).
    backlog = list(range(live, live + 600))
    await produce(kafka_bootstrap, topics.raw, fleet_events(servers, t0, backlog))
    worker = await start_worker(kafka_bootstrap, topics, group)
    seconds = list(range(live + 600))
    # Every window: the backlog's event time closes all but each server's last two, and the
    # wall clock those once the worker has processed everything.
    closed = expected_windows(servers, t0, seconds, 5)
    try:
        values = await collect(kafka_bootstrap, topics.a5, len(closed), 120, distinct=True)
        fives = by_window(values)
    except TimeoutError:
        log = await stop_worker(worker)
        pytest.fail(f"windows missing after the backlog; worker log:\n{log[-5000:]}")
    finally:
        await stop_worker(worker)
    assert summary(fives) == closed


async def test_a_failed_send_starts_over_from_the_checkpoint_in_place(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """The 5 s output topic disappears under a running worker: its sends time out. The worker
    does not exit: it starts over from its last checkpoint with a new producer, again while
    the topic is missing; once the topic is back every window of what came meanwhile is
    there, complete."""
    t0 = datetime.fromtimestamp(int(time.time()) // 60 * 60, UTC) - timedelta(hours=2)
    servers = [str(uuid.uuid4()) for _ in range(3)]
    group = f"test-recover-{uuid.uuid4().hex[:8]}"
    await produce(kafka_bootstrap, topics.raw, fleet_events(servers, t0, range(30)))
    proc = await start_worker(kafka_bootstrap, topics, group, kafka_request_timeout_ms="3000")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, **SECURITY)
    await admin.start()
    try:
        await collect(kafka_bootstrap, topics.a5, 12, timeout=60)  # it runs
        await admin.delete_topics([topics.a5])
        rest = fleet_events(servers, t0, range(30, 60)) + fleet_events(servers, t0, [200])
        await produce(kafka_bootstrap, topics.raw, rest)
        await asyncio.sleep(12)  # sends time out after 3 s: it starts over, more than once
        assert proc.returncode is None, await stop_worker(proc)
        await create_topics(
            KafkaSettings(kafka_bootstrap=kafka_bootstrap), [TopicSpec(topics.a5, 4, 3_600_000)]
        )
        later = list(range(30, 60))
        try:
            got = by_window(await collect(kafka_bootstrap, topics.a5, 18, 90, distinct=True))
        except TimeoutError:
            pytest.fail(f"windows missing after the topic came back:\n{await stop_worker(proc)}")
    finally:
        await admin.close()
        log = await stop_worker(proc)
    assert proc.returncode == 0, log[-5000:]
    assert "starting over from the last checkpoint" in log
    mine = {
        k: w
        for k, w in got.items()
        if t0 + timedelta(seconds=30) <= k[1] < t0 + timedelta(seconds=60)
    }
    assert summary(mine) == expected_windows(servers, t0, later, 5)


async def processed(worker: StreamWorker, records: int, timeout: float = 60) -> None:
    """Wait until `worker` has processed the first `records` records of its fresh topic."""
    for _ in range(int(timeout * 10)):
        if sum(worker.processor.next_offsets.values()) >= records:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{records} records not processed within {timeout:g} s")


async def test_starting_over_in_place_replays_from_the_checkpoint_the_coordinator_forgot(
    kafka_bootstrap: str, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Just after a restart of the whole cluster, the group coordinator answers for a moment
    that the group never committed (offset -1, no error: measured on the 3-broker stack), and
    aiokafka's `seek_to_committed` then does not seek. A worker starting over in place at
    that moment (its sends failed during the outage) must still replay from its checkpoint,
    not go on from where its fetch had got to: every 5 s window and the hour hold every
    sample, as without the outage."""
    t0 = datetime.fromtimestamp(int(time.time()) // 3600 * 3600, UTC) - timedelta(hours=2)
    servers = [str(uuid.uuid4()) for _ in range(3)]
    settings = StreamSettings(
        kafka_bootstrap=kafka_bootstrap,
        stream_group=f"test-forgot-{uuid.uuid4().hex[:8]}",
        raw_topic=topics.raw,
        agg_5s_topic=topics.a5,
        agg_1h_topic=topics.a1h,
        agg_1d_topic=topics.a1d,
        status_topic=topics.status,
        dlq_topic=topics.dlq,
        stream_checkpoint_interval=3600,  # only the checkpoint the test takes
    )
    worker = StreamWorker(settings)
    task = asyncio.create_task(worker._consume())
    try:
        await produce(kafka_bootstrap, topics.raw, fleet_events(servers, t0, range(12)))
        await processed(worker, 12 * len(servers))
        async with worker._lock:  # with the windows of 5 to 15 s open
            await worker._checkpoint()
        await produce(kafka_bootstrap, topics.raw, fleet_events(servers, t0, range(12, 30)))
        await processed(worker, 30 * len(servers))
        consumer = worker.consumer
        assert consumer is not None

        async def nothing_committed(tp: object) -> None:
            return None  # what `committed()` returns for that answer

        monkeypatch.setattr(consumer, "committed", nothing_committed)
        async with worker._lock:  # as after its sends failed during the outage
            await worker._recover(KafkaConnectionError("every broker was down"))
        monkeypatch.undo()
        # The next hour's event closes this one; the windows up to 40 s close before it.
        rest = fleet_events(servers, t0, range(30, 40)) + fleet_events(servers, t0, [3700])
        await produce(kafka_bootstrap, topics.raw, rest)
        fives = by_window(
            await collect(kafka_bootstrap, topics.a5, 8 * len(servers), 60, distinct=True)
        )
        hours = by_window(
            await collect(kafka_bootstrap, topics.a1h, len(servers), 60, distinct=True)
        )
    except TimeoutError:
        pytest.fail("windows missing after starting over in place")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    seconds = list(range(40))
    assert summary(fives) == expected_windows(servers, t0, seconds, 5)
    assert summary(hours) == expected_windows(servers, t0, seconds, 3600)


HOSTS = 300


SECONDS = 20


PARTITIONS = 6


RUNS = 5


@pytest.fixture
async def catch_up_topics(kafka_bootstrap: str) -> AsyncIterator[Topics]:
    s = uuid.uuid4().hex[:8]
    t = Topics(f"c.raw.{s}", f"c.a5.{s}", f"c.a1h.{s}", f"c.a1d.{s}", f"c.st.{s}", f"c.dlq.{s}")
    specs = [TopicSpec(n, PARTITIONS, 3_600_000) for n in vars(t).values()]
    await create_topics(KafkaSettings(kafka_bootstrap=kafka_bootstrap), specs)
    yield t


def with_forced_ticks(worker: StreamWorker, ahead: float) -> list[int]:
    """Make `worker` run a tick between every fetch and its processing, its clock `ahead`
    seconds in the future; returns the list the number of forced ticks is counted in."""
    forced = [0]
    fetched = worker.restore_missing  # awaited between the fetch and the processing

    async def fetched_then_tick(partitions: list[int]) -> None:
        await fetched(partitions)
        real = time.time
        ahead_clock = types.SimpleNamespace(time=lambda: real() + ahead, monotonic=time.monotonic)
        setattr(streams.app, "time", ahead_clock)  # noqa: B010 - the worker's clock only
        try:
            await worker._tick()
        finally:
            setattr(streams.app, "time", time)  # noqa: B010
        forced[0] += 1

    worker.restore_missing = fetched_then_tick  # type: ignore[method-assign]
    return forced


@pytest.mark.parametrize("run", range(RUNS))
async def test_catch_up_with_a_tick_between_fetch_and_processing_loses_nothing(
    kafka_bootstrap: str, catch_up_topics: Topics, run: int
) -> None:
    servers = [str(uuid.uuid4()) for _ in range(HOSTS)]
    t0 = datetime.fromtimestamp((int(time.time()) - 7200) // 5 * 5, UTC)
    await produce(kafka_bootstrap, catch_up_topics.raw, fleet_events(servers, t0, range(SECONDS)))
    settings = StreamSettings(
        kafka_bootstrap=kafka_bootstrap,
        stream_group=f"test-catchup-{uuid.uuid4().hex[:8]}",
        raw_topic=catch_up_topics.raw,
        agg_5s_topic=catch_up_topics.a5,
        agg_1h_topic=catch_up_topics.a1h,
        agg_1d_topic=catch_up_topics.a1d,
        status_topic=catch_up_topics.status,
        dlq_topic=catch_up_topics.dlq,
        stream_batch=400,  # many fetches, each ending a partition's backlog sooner or later
        offline_after=4,
    )
    worker = StreamWorker(settings)
    forced = with_forced_ticks(worker, ahead=3.0)
    task = asyncio.create_task(worker._consume())
    try:
        values = await collect(
            kafka_bootstrap, catch_up_topics.a5, HOSTS * SECONDS // 5, distinct=True
        )
        hours = by_window(await collect(kafka_bootstrap, catch_up_topics.a1h, HOSTS, distinct=True))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    fives = by_window(values)
    assert forced[0] >= PARTITIONS
    assert await records_in(kafka_bootstrap, catch_up_topics.dlq, PARTITIONS) == 0
    assert len(fives) == HOSTS * SECONDS // 5
    short = [(k, w.count) for k, w in fives.items() if w.count != 5 or w.revision != 0]
    assert short == []
    per_server: dict[str, int] = {}
    for (sid, _), w in hours.items():
        per_server[sid] = per_server.get(sid, 0) + w.count
    assert per_server == dict.fromkeys(servers, SECONDS)
    assert all(start >= t0 - timedelta(hours=1) for _, start in hours)
