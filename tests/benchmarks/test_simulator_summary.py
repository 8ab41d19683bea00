"""The simulator's closing counts as the benchmarks read them from its log."""

from __future__ import annotations

from benchmarks.simulator import summary

LINE = "simulator stopped: {} seconds, {} events, {} late seconds, 0 skipped; {} sent, {} dropped"


def test_the_last_run_of_a_shared_log_counts() -> None:
    log = "\n".join(
        [
            LINE.format(60, 300_000, 0, 300_000, 0),
            "... the next run ...",
            LINE.format(60, 1_800_000, 5, 1_304_000, 0) + ", 496000 undelivered",
        ]
    )
    counts = summary(log)
    assert counts["events"] == 1_800_000 and counts["late"] == 5
    # Left in the buffer when the stop's flush gave up: never sent, so dropped.
    assert counts["sent"] == 1_304_000 and counts["dropped"] == 496_000


def test_a_line_of_an_earlier_release_reads_without_undelivered() -> None:
    counts = summary(LINE.format(30, 600_000, 0, 599_990, 10))
    assert counts["dropped"] == 10 and counts["ticks"] == 30
