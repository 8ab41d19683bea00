"""The drill's verdicts, as pure logic: rows compared, an agent's samples checked for loss."""

from __future__ import annotations

from infra.drill import RECOVERY_TIMEOUT, AgentSamples, FaultResult, Report, same_row


def test_rows_are_equal_column_for_column_floats_to_their_last_digits() -> None:
    row = {"server_id": "a", "sample_count": 5, "cpu_usage": 30.05, "processes": "[]"}
    assert same_row(row, dict(row))
    assert same_row(row, row | {"cpu_usage": 30.050000000000004})  # another order of addition
    assert not same_row(row, row | {"cpu_usage": 30.06})
    assert not same_row(row, row | {"sample_count": 4})
    assert not same_row(row, row | {"processes": "[{}]"})


def test_an_agent_missing_nothing_but_its_own_downtime_passes() -> None:
    killed, restarted = 1000.0, 1010.0
    stamps = [float(t) for t in range(950, 1000)] + [float(t) for t in range(1012, 1040)]
    whole = AgentSamples.of(stamps, sent=len(stamps) + 2, killed=killed, restarted=restarted)
    assert (whole.missing, whole.resent, whole.before_kill) == (0, 2, 10)
    # Its last samples before the kill never reached the topic: the spool lost them.
    lossy = AgentSamples.of(
        stamps[:40] + stamps[50:], sent=len(stamps) - 10, killed=killed, restarted=restarted
    )
    assert lossy.missing == 22 and lossy.before_kill == 0  # seconds 990-1011 all count


def _report(*faults: FaultResult, lost: int = 0) -> Report:
    tables = ("metrics_snapshots", "metrics_hourly", "metrics_daily")
    return Report(
        list(faults), 10, 100, 100, dict.fromkeys(tables, 20),
        {"metrics_snapshots": lost, "metrics_hourly": 0, "metrics_daily": 0},
        dict.fromkeys(tables, 0), dict.fromkeys(tables, 0), 0,
    )  # fmt: skip


def test_a_slow_recovery_is_reported_apart_from_the_data() -> None:
    quick = FaultResult("sink", "pid 1", 0.0, 12.5)
    slow = FaultResult("broker-leader", "kafka-2", 0.0, RECOVERY_TIMEOUT, recovered=False)
    assert "after   12.5 s" in quick.describe()
    assert slow.describe() == f"not back under 1 s of lag within {RECOVERY_TIMEOUT:.0f} s"
    whole_but_slow = _report(quick, slow)
    assert whole_but_slow.passed and not whole_but_slow.recovered
    assert whole_but_slow.lines()[-1] == "FAIL"
    assert _report(quick).lines()[-1] == "PASS"
    lossy = _report(quick, lost=1)
    assert lossy.recovered and not lossy.passed and lossy.lines()[-1] == "FAIL"
