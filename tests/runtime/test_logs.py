"""Unit tests: an outage is logged once, then once per interval with a count, then once back;
client libraries' repeated lines are held back the same way."""

from __future__ import annotations

import logging

import pytest

from runtime.logs import Outage, QuietRepeats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_logged_once_then_per_interval_then_once_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage("postgres", logging.getLogger("t.outage"), interval=30, clock=clock)
    with caplog.at_level(logging.INFO, logger="t.outage"):
        for _ in range(240):  # two minutes of failures, one every half second
            outage.failed(ConnectionRefusedError(111, "refused"))
            clock.now += 0.5
        assert not outage.up
        outage.ok()
        outage.ok()  # up already: nothing more
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "postgres unavailable: ConnectionRefusedError: [Errno 111] refused"
    still = [line for line in lines if "still unavailable" in line]
    assert len(still) == 3 and "after 30 s (61 failed attempts)" in still[0]
    assert lines[-1] == "postgres back after 120.0 s (240 failed attempts)"
    assert len(lines) == 5 and outage.up and outage.failures == 0


def _record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_repeats_of_a_client_library_line_are_held_back_and_counted() -> None:
    clock = Clock()
    quiet = QuietRepeats(interval=30, clock=clock)
    passed = []
    for i in range(100):  # aiokafka's reconnect loop: ten lines a second for ten seconds
        record = _record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, i)
        if quiet.filter(record):
            passed.append(record.getMessage())
        clock.now += 0.1
    clock.now += 25
    record = _record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "x")
    assert quiet.filter(record)
    assert passed == ["Unable connect to node with id 1: 0"]
    assert record.getMessage().endswith("(99 more like this in the last 35 s)")


def test_our_own_lines_are_never_held_back() -> None:
    quiet = QuietRepeats(interval=30, clock=Clock())
    assert all(quiet.filter(_record("sinks.service", "dead-lettered %s", i)) for i in range(10))
