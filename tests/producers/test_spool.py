"""The producer library's on-disk spool, without a broker: order, the bound, torn and damaged
records, replay after reopening, removal only after acknowledgement; the library with a spool
(what it replays, what it drops when full); and, against the real broker, a producer killed
with SIGKILL while cut off from it, then started again."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import sys
from pathlib import Path

import pytest

from infra.settings import StackSettings
from producers import MetricProducer, ProducerSettings
from producers.spool import OVERHEAD, Spool, SpoolError, SpoolRecord, frame
from schemas import decode_raw_event
from schemas.topics import TopicSpec
from tests.conftest import ROOT
from tests.e2e.relay import Relay
from tests.kafka import read_all
from tests.producers.spooler import T0, T1, server

KEY = b"6f1c2a8e-4b7d-4e0a-9c35-0d2f5b8e91a4"


def _add(spool: Spool, n: int, start: int = 0) -> list[SpoolRecord]:
    out = []
    for i in range(start, start + n):
        rec = spool.add(KEY, _ev(i))
        assert rec is not None
        out.append(rec)
    return out


def _ev(i: int) -> bytes:
    return b"event %03d" % i


def _values(records: list[SpoolRecord]) -> list[bytes]:
    return [r.value for r in records]


def _reopen(spool: Spool, **kwargs: int) -> Spool:
    spool.close()
    return Spool(spool.path, kwargs.pop("max_bytes", spool.max_bytes), **kwargs)


def _crash(spool: Spool) -> Spool:
    """What the next process finds after this one died without closing: the files as they
    are (the lock goes with the process)."""
    spool._close_active()
    os.close(spool._lock_fd)
    return Spool(spool.path, spool.max_bytes, segment_bytes=spool.segment_bytes)


def _segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def test_records_come_back_in_order_after_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, segment_bytes=200)  # a new segment every few batches
    for batch in range(10):
        spool.append(_add(spool, 7, start=batch * 7))
    assert len(_segments(tmp_path)) > 3
    again = _crash(spool)
    assert _values(again.recovered) == [_ev(i) for i in range(70)]
    assert again.corrupt == 0
    assert {r.key for r in again.recovered} == {KEY}
    again.close()


def test_a_record_leaves_only_after_its_acknowledgement_and_a_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, segment_bytes=100)
    records = _add(spool, 20)
    for i in range(0, 20, 5):
        spool.append(records[i : i + 5])
    # Acknowledged out of order: 0-6 and 9-13, not 7 and 8.
    Spool.ack(records[:7] + records[9:14])
    spool.commit()
    again = _crash(spool)
    # The pointer stops at the first record not acknowledged; the acknowledged ones behind
    # it come again (at least once).
    assert _values(again.recovered) == [_ev(i) for i in range(7, 20)]
    Spool.ack(again.recovered)
    again.commit()
    assert _segments(tmp_path) == [] or again.used_bytes < 100
    third = _crash(again)
    assert third.recovered == []
    third.close()


def test_acknowledged_but_not_committed_records_are_sent_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    records = _add(spool, 5)
    spool.append(records)
    Spool.ack(records)  # the crash comes before the commit
    again = _crash(spool)
    assert _values(again.recovered) == _values(records)
    again.close()


def test_a_clean_close_with_everything_acknowledged_leaves_no_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, segment_bytes=100)
    records = _add(spool, 30)
    spool.append(records[:15])
    spool.append(records[15:])
    Spool.ack(records)
    spool.close()
    assert _segments(tmp_path) == []
    again = Spool(tmp_path, 1 << 20)
    assert again.recovered == [] and again.used_bytes == 0
    new = _add(again, 3, start=100)
    again.append(new)
    assert _values(_crash(again).recovered) == _values(new)


def test_new_records_follow_the_recovered_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(_add(spool, 3))
    again = _crash(spool)
    again.append(_add(again, 3, start=3))
    Spool.ack(again.recovered[:2])
    again.commit()
    assert _values(_crash(again).recovered) == [_ev(i) for i in range(2, 6)]


def test_the_bound_refuses_new_records_and_keeps_the_spooled(tmp_path: Path) -> None:
    size = OVERHEAD + len(KEY) + len(_ev(0))
    spool = Spool(tmp_path, 10 * size)
    kept = _add(spool, 10)
    assert spool.add(KEY, _ev(10)) is None  # full: the newest is refused
    spool.append(kept)
    assert spool.used_bytes == 10 * size == sum(p.stat().st_size for p in _segments(tmp_path))
    assert spool.add(KEY, _ev(11)) is None
    Spool.ack(kept[:4])
    spool.commit()  # the pointer moves, but the segment is still the active one
    assert spool.add(KEY, _ev(12)) is None
    again = _crash(spool)
    assert _values(again.recovered) == _values(kept[4:])
    # Reservations count: what is added but not yet appended fills the spool too.
    assert again.add(KEY, _ev(13)) is None
    again.close()


def test_acknowledged_segments_free_their_bytes(tmp_path: Path) -> None:
    size = OVERHEAD + len(KEY) + len(_ev(0))
    spool = Spool(tmp_path, 20 * size, segment_bytes=5 * size)
    records = _add(spool, 20)
    for i in range(0, 20, 5):
        spool.append(records[i : i + 5])
    assert spool.add(KEY, _ev(999)) is None
    Spool.ack(records[:10])
    spool.commit()
    assert spool.used_bytes == 10 * size  # two segments gone
    more = [spool.add(KEY, _ev(i)) for i in range(20, 30)]
    assert all(r is not None for r in more) and spool.add(KEY, _ev(999)) is None
    spool.close()


def test_a_torn_tail_is_skipped_and_the_records_before_it_are_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(_add(spool, 5))
    segment = _segments(tmp_path)[-1]
    spool._close_active()
    os.close(spool._lock_fd)
    whole = segment.read_bytes()
    # A crash in the middle of the next batch's write: a whole record, and half of another.
    torn = Spool(tmp_path, 1 << 20)
    extra = _add(torn, 2, start=5)
    torn._close_active()
    os.close(torn._lock_fd)
    segment.write_bytes(whole + frame(extra[0]) + frame(extra[1])[:9])
    with caplog.at_level(logging.WARNING, logger="producers.spool"):
        again = Spool(tmp_path, 1 << 20)
    assert _values(again.recovered) == [_ev(i) for i in range(6)]
    assert again.corrupt == 1
    assert "torn" in caplog.text and "the 6 records before it are kept" in caplog.text
    # The damaged segment goes once its records are acknowledged; nothing is appended to it.
    again.append(_add(again, 1, start=6))
    Spool.ack(again.recovered)
    again.commit()
    assert segment not in _segments(tmp_path)
    assert _values(_crash(again).recovered) == [_ev(6)]


@pytest.mark.parametrize("cut", [1, 4, 7, 8, 9, 12])
def test_a_record_cut_anywhere_is_detected(tmp_path: Path, cut: int) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(_add(spool, 2))
    segment = _segments(tmp_path)[-1]
    spool._close_active()
    os.close(spool._lock_fd)
    data = segment.read_bytes()
    first = len(data) // 2
    segment.write_bytes(data[: first + cut])
    again = Spool(tmp_path, 1 << 20)
    assert _values(again.recovered) == [_ev(0)] and again.corrupt == 1
    again.close()


def test_a_damaged_record_stops_its_segment_not_the_others(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, segment_bytes=60)
    records = _add(spool, 6)
    for i in range(0, 6, 2):
        spool.append(records[i : i + 2])
    spool._close_active()
    os.close(spool._lock_fd)
    _, second, _ = _segments(tmp_path)
    data = bytearray(second.read_bytes())
    data[-1] ^= 0xFF  # the second segment's last record: a bit flipped
    second.write_bytes(bytes(data))
    again = Spool(tmp_path, 1 << 20, segment_bytes=60)
    assert _values(again.recovered) == [_ev(i) for i in (0, 1, 2, 4, 5)]
    assert again.corrupt == 1
    again.close()


def test_an_unreadable_pointer_replays_everything(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    records = _add(spool, 4)
    spool.append(records)
    Spool.ack(records[:2])
    spool.commit()
    spool._close_active()
    os.close(spool._lock_fd)
    assert json.loads((tmp_path / "acked").read_bytes())["segment"] >= 0
    (tmp_path / "acked").write_bytes(b"{not json")
    again = Spool(tmp_path, 1 << 20)
    assert _values(again.recovered) == _values(records)  # duplicates, never a loss
    again.close()


def test_a_second_process_on_the_folder_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    with pytest.raises(SpoolError, match="in use by another process"):
        Spool(tmp_path, 1 << 20)
    spool.close()
    Spool(tmp_path, 1 << 20).close()


def test_a_folder_that_cannot_be_used_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="cannot create the spool folder /sys/fleetpulse"):
        Spool(Path("/sys/fleetpulse-spool"), 1 << 20)  # refused even to root
    with pytest.raises(SpoolError, match="spool folder /proc/self is not writable"):
        Spool(Path("/proc/self"), 1 << 20)
    if os.geteuid() != 0:  # (root writes through permission bits)
        tmp_path.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            with pytest.raises(SpoolError, match="not writable"):
                Spool(tmp_path, 1 << 20)
        finally:
            tmp_path.chmod(stat.S_IRWXU)


def test_a_file_in_place_of_the_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "spool").write_text("")
    with pytest.raises(SpoolError, match="spool folder"):
        Spool(tmp_path / "spool", 1 << 20)


def test_a_failed_write_leaves_the_spool_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, 1 << 20)
    good = _add(spool, 3)
    spool.append(good)
    before = spool.used_bytes
    bad = _add(spool, 2, start=3)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", disk_full)
        with pytest.raises(SpoolError, match=r"cannot write .* No space left"):
            spool.append(bad)
    assert spool.used_bytes == before and all(r.segment == -1 for r in bad)
    assert sum(p.stat().st_size for p in _segments(tmp_path)) == before  # cut back
    later = _add(spool, 1, start=5)
    spool.append(later)
    assert _values(_crash(spool).recovered) == [_ev(0), _ev(1), _ev(2), _ev(5)]


# -- the library with a spool ----------------------------------------------------------------


def _spooling(path: Path, max_bytes: int = 1 << 20) -> ProducerSettings:
    # Never started here, so nothing is sent; the bootstrap address is never used.
    return ProducerSettings(
        kafka_bootstrap="127.0.0.1:9", spool_dir=path, spool_max_bytes=max_bytes, buffer_size=2
    )


async def test_the_library_keeps_what_it_could_not_send_for_the_next_run(
    tmp_path: Path,
) -> None:
    producer = MetricProducer(_spooling(tmp_path))
    for i in range(10):  # more than buffer_size: with a spool its bound is the spool's
        producer.send_encoded(KEY.decode(), b"%d" % i)
    await producer.stop(timeout=0)
    assert producer.stats.dropped == 0 and producer.stats.spooled == 10
    again = MetricProducer(_spooling(tmp_path))
    again.send_encoded(KEY.decode(), b"new")
    assert again.stats.replayed == 10
    assert [r.value for r in again._buffer] == [b"%d" % i for i in range(10)]
    assert [r.value for r in again._unspooled] == [b"new"]  # after the replayed ones
    await again.stop(timeout=0)
    third = MetricProducer(_spooling(tmp_path))
    assert [r.value for r in third._buffer] == [b"%d" % i for i in range(10)] + [b"new"]
    await third.stop(timeout=0)


async def test_the_library_drops_the_newest_when_the_spool_is_full(tmp_path: Path) -> None:
    size = OVERHEAD + len(KEY) + 4
    settings = _spooling(tmp_path, max_bytes=64 * 1024)
    producer = MetricProducer(settings)
    fits = settings.spool_max_bytes // size
    for i in range(fits + 25):
        producer.send_encoded(KEY.decode(), b"%04d" % (i % 10_000))
    stats = producer.stats
    assert (stats.accepted, stats.dropped, stats.buffered) == (fits + 25, 25, fits)
    assert producer.telemetry.dropped.labels(reason="spool_full")._value.get() >= 25
    await producer.stop(timeout=0)
    again = MetricProducer(_spooling(tmp_path, max_bytes=64 * 1024))
    assert [r.value for r in again._buffer][:3] == [b"0000", b"0001", b"0002"]
    assert again.stats.replayed == fits
    await again.stop(timeout=0)


async def test_the_spool_task_writes_while_the_broker_is_away(tmp_path: Path) -> None:
    """Started against a broker that is not there: events reach the disk within moments.
    (Plaintext: a unit test has no stack, so no CA to build a TLS context from.)"""
    settings = _spooling(tmp_path).model_copy(update={"kafka_security_protocol": "PLAINTEXT"})
    producer = MetricProducer(settings)
    await producer.start()
    try:
        for i in range(5):
            producer.send_encoded(KEY.decode(), b"%d" % i)
            await asyncio.sleep(0.05)
        for _ in range(100):
            if producer.stats.spooled == 5:
                break
            await asyncio.sleep(0.01)
        assert producer.stats.spooled == 5
        on_disk = sum(p.stat().st_size for p in _segments(tmp_path))
        assert on_disk == 5 * (OVERHEAD + len(KEY) + 1)
    finally:
        await producer.stop(timeout=0)


# -- a producer killed during a broker outage (the real broker) ------------------------------


async def _spooler(
    stack: StackSettings, spool: Path, topic: str, *args: str
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "FLEETPULSE_KAFKA_BOOTSTRAP": f"127.0.0.1:{stack.kafka_proxy_port}",  # the relay
        "FLEETPULSE_SPOOL_DIR": str(spool),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.producers.spooler", topic, *args,
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _lines(
    proc: asyncio.subprocess.Process, seconds: float, last: list[tuple[int, int]]
) -> None:
    """Read `spooled S accepted A` lines for `seconds`, keeping the latest in `last`."""
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), left)
        except TimeoutError:
            return
        assert line, "the spooler exited"
        _, spooled, _, accepted = line.split()
        last.append((int(spooled), int(accepted)))


@pytest.mark.integration
async def test_a_producer_killed_during_an_outage_loses_nothing_it_spooled(
    stack_settings: StackSettings, new_topic: TopicSpec, tmp_path: Path
) -> None:
    """A producer sending about 1,000 events/s for 20 servers through a relay: 3 s with the broker,
    then 4 s cut off from it, then `kill -9`. Started again with the broker back, it sends
    every event it had on disk before the kill first, in order per server, then new ones."""
    keys, new = 20, 200
    relay = Relay(stack_settings.kafka_proxy_port, stack_settings.kafka_proxied_port)
    await relay.start()
    spool = tmp_path / "spool"
    seen: list[tuple[int, int]] = []
    proc = await _spooler(stack_settings, spool, new_topic.name, "send", "--keys", str(keys))
    try:
        await _lines(proc, 3, seen)
        assert relay.connections > 0, "the spooler never connected through the relay"
        await relay.cut()
        await _lines(proc, 4, seen)
        proc.kill()  # SIGKILL
        await proc.wait()
        spooled, accepted = seen[-1]  # spooled: on disk before the kill, for sure
        assert spooled > 3_000, seen[-5:]
        await relay.restore()
        again = await _spooler(
            stack_settings, spool, new_topic.name, "replay", "--keys", str(keys),
            "--new", str(new),
        )  # fmt: skip
        out, err = await asyncio.wait_for(again.communicate(), 120)
        assert again.returncode == 0, err.decode()[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
        await relay.close()
    stats = json.loads(out.decode().splitlines()[-1])
    assert stats["delivered"] and stats["dropped"] == 0, stats

    records = await read_all(stack_settings.kafka_bootstrap, new_topic.name, spooled + new)
    # Per server, in the partition's order: its old events (T0 on), then its new ones (T1 on).
    by_server: dict[str, list[tuple[bool, int]]] = {}
    for _, value in records:
        e = decode_raw_event(value)
        is_new = e.timestamp >= T1
        second = int((e.timestamp - (T1 if is_new else T0)).total_seconds())
        by_server.setdefault(e.server_id, []).append((is_new, second))
    old: list[int] = []
    for i in range(keys):
        got = by_server.pop(server(i))
        assert got == sorted(got), f"server {i} out of order"
        old += [second * keys + i for is_new, second in got if not is_new]
        assert sum(is_new for is_new, _ in got) == new // keys
    assert not by_server
    missing = set(range(spooled)) - set(old)
    assert not missing, f"{len(missing)} spooled events never arrived: {sorted(missing)[:10]}"
    duplicates = len(old) - len(set(old))
    unspooled_lost = len(set(range(spooled, accepted)) - set(old))
    print(
        f"spooled {spooled}, accepted {accepted} before the kill; replayed "
        f"{stats['replayed']}; {duplicates} duplicates; {unspooled_lost} of the "
        f"{accepted - spooled} accepted but not yet on disk lost"
    )
    assert max(old) < accepted + 50  # nothing the producer did not send
    # At least once: only what was acknowledged since the last commit (or was in flight when
    # the relay was cut) comes twice, never more than a couple of seconds' worth.
    assert duplicates <= 2_500
