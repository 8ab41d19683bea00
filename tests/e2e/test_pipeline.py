"""End to end: producers → Kafka → stream worker → sink → PostgreSQL, and the registry's view.

The real services run as subprocesses on topics, consumer groups and a database of this
module's own (tests/e2e/pipeline.py); events go in through the Python producer client and
through kcat, as any non-Python producer would send them.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from infra.settings import StackSettings
from tests.e2e.pipeline import Pipeline, register, running_pipeline, wait_for
from tests.factories import event_dict
from tests.kafka import kcat, produce

pytestmark = pytest.mark.integration

#: An hour boundary of yesterday: inside the database's partitions, and long closed by the clock.
T0 = datetime.now(UTC).replace(hour=6, minute=0, second=0, microsecond=0) - timedelta(days=1)


@pytest.fixture(scope="module")
async def pipeline(
    stack_settings: StackSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Pipeline, str]]:
    """The running pipeline and an admin token for its registry."""
    async with running_pipeline(stack_settings, tmp_path_factory.mktemp("e2e-logs")) as started:
        yield started


def raw(server: str, at: datetime, cpu: float, rx: int = 10) -> bytes:
    return json.dumps(
        event_dict(server_id=server, timestamp=at.isoformat(), cpu_usage=cpu, network_rx=rx)
    ).encode()


def kcat_produce(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    """Send with kcat, one `key|json` line per message: the documented contract, no Python."""
    lines = b"".join(key.encode() + b"|" + value + b"\n" for key, value in records)
    subprocess.run(
        kcat(bootstrap, "-t", topic, "-P", "-K", "|"),
        input=lines,
        check=True,
        timeout=30,
        capture_output=True,
    )


async def test_scripted_producers_give_exactly_the_expected_rows(
    pipeline: tuple[Pipeline, str], stack_settings: StackSettings
) -> None:
    p, token = pipeline
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    await register(p, token, a, b, c)
    # A: one event per second for a minute (cpu = the second); B: 15 seconds, cpu 50 + second.
    timed: list[tuple[float, str, bytes]] = [
        (i, a, raw(a, T0 + timedelta(seconds=i), float(i))) for i in range(60)
    ]
    timed += [(i + 0.5, b, raw(b, T0 + timedelta(seconds=i), 50.0 + i, 20)) for i in range(15)]
    records = [(sid.encode(), value) for _, sid, value in sorted(timed, key=lambda t: t[0])]
    await produce(stack_settings.kafka_bootstrap, p.topics.raw, records)
    # C, through kcat: 10 seconds two hours later (so it is not behind A on a shared partition).
    c0 = T0 + timedelta(hours=2)
    await asyncio.to_thread(
        kcat_produce,
        stack_settings.kafka_bootstrap,
        p.topics.raw,
        [(c, raw(c, c0 + timedelta(seconds=i), 5.0, 7)) for i in range(10)],
    )

    conn = await p.connect()
    try:

        async def all_landed() -> bool:
            counts = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM metrics_snapshots WHERE server_id = ANY($1)) AS s,"
                " (SELECT count(*) FROM metrics_hourly WHERE server_id = ANY($1)) AS h,"
                " (SELECT count(*) FROM metrics_daily WHERE server_id = ANY($1)) AS d",
                [a, b, c],
            )
            return counts is not None and tuple(counts) == (12 + 3 + 2, 3, 3)

        await wait_for("all 5 s, hourly and daily rows", all_landed, timeout=90)
        await asyncio.sleep(2)  # anything beyond what is expected would show now
        fives = await conn.fetch(
            'SELECT server_id, "timestamp", sample_count, cpu_usage, cpu_usage_min, '
            "cpu_usage_max, network_rx FROM metrics_snapshots WHERE server_id = ANY($1) "
            'ORDER BY server_id, "timestamp"',
            [a, b, c],
        )
        hourly = await conn.fetch(
            "SELECT server_id, bucket, sample_count, cpu_usage_avg, cpu_usage_min, "
            "cpu_usage_max, network_rx FROM metrics_hourly WHERE server_id = ANY($1)",
            [a, b, c],
        )
        daily = await conn.fetch(
            "SELECT server_id, bucket, sample_count, cpu_usage_avg, network_rx "
            "FROM metrics_daily WHERE server_id = ANY($1)",
            [a, b, c],
        )
    finally:
        await conn.close()

    def windows(sid: str) -> list[tuple[object, ...]]:
        return [tuple(r)[1:] for r in fives if r["server_id"] == sid]

    assert windows(a) == [
        (T0 + timedelta(seconds=s), 5, s + 2.0, float(s), s + 4.0, 50) for s in range(0, 60, 5)
    ]
    assert windows(b) == [
        (T0 + timedelta(seconds=s), 5, 52.0 + s, 50.0 + s, 54.0 + s, 100) for s in (0, 5, 10)
    ]
    assert windows(c) == [(c0 + timedelta(seconds=s), 5, 5.0, 5.0, 5.0, 35) for s in (0, 5)]
    assert {r["server_id"]: tuple(r)[1:] for r in hourly} == {
        a: (T0, 60, 29.5, 0.0, 59.0, 600),
        b: (T0, 15, 57.0, 50.0, 64.0, 300),
        c: (c0, 10, 5.0, 5.0, 5.0, 70),
    }
    day = T0.replace(hour=0)
    assert {r["server_id"]: tuple(r)[1:] for r in daily} == {
        a: (day, 60, 29.5, 600),
        b: (day, 15, 57.0, 300),
        c: (day, 10, 5.0, 70),
    }


async def test_a_silent_server_goes_offline_and_its_series_shows_the_gap(
    pipeline: tuple[Pipeline, str],
    stack_settings: StackSettings,
) -> None:
    p, token = pipeline
    d = str(uuid.uuid4())
    await register(p, token, d)
    # Six seconds of a live host (timestamps from now on: the worker may see them a little
    # ahead of its clock), then silence.
    start = datetime.now(UTC).replace(microsecond=0)
    sent = [start + timedelta(seconds=i) for i in range(6)]
    await produce(
        stack_settings.kafka_bootstrap,
        p.topics.raw,
        [(d.encode(), raw(d, at, 30.0 + i)) for i, at in enumerate(sent)],
    )

    async def server() -> dict[str, object]:
        r = await p.request("GET", f"/servers/{d}", token)
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        return body

    async def online() -> bool:
        return (await server())["is_online"] is True

    async def offline_again() -> bool:
        return (await server())["is_online"] is False

    await wait_for("online after its first events", online, timeout=30)
    await wait_for("offline after its silence", offline_again, timeout=40)

    begin = datetime.fromtimestamp(math.floor(start.timestamp() / 60) * 60, UTC)
    params = {
        "from": begin.isoformat(),
        "to": (begin + timedelta(minutes=3)).isoformat(),
        "step": "1m",
    }

    async def series() -> list[dict[str, object]] | None:
        r = await p.request("GET", f"/servers/{d}/metrics", token, params=params)
        assert r.status_code == 200, r.text
        points: list[dict[str, object]] = r.json()["points"]
        return points if sum(int(str(pt["samples"])) for pt in points) == 6 else None

    points = await wait_for("its six samples through the metrics API", series, timeout=40)
    assert [pt["bucket"] for pt in points] == [
        (begin + timedelta(minutes=m)).isoformat().replace("+00:00", "Z") for m in range(3)
    ]
    with_data = {datetime.fromtimestamp(math.floor(at.timestamp() / 60) * 60, UTC) for at in sent}
    for m, pt in enumerate(points):
        bucket = begin + timedelta(minutes=m)
        if bucket in with_data:
            assert int(str(pt["samples"])) > 0 and pt["cpu_usage_avg"] is not None
        else:  # the gap after it went silent is there, empty
            assert pt["samples"] == 0 and pt["cpu_usage_avg"] is None
    assert any(pt["samples"] == 0 for pt in points)
