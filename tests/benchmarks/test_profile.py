"""The profile summary: py-spy's collapsed stacks summed per function."""

from __future__ import annotations

import pytest

from benchmarks.profile import Entry, by_own, frame_name, summarise


def test_a_frame_is_named_by_function_and_file() -> None:
    assert frame_name("record (streams/processor.py:170)") == "record (streams/processor.py)"
    assert frame_name("record (streams/processor.py)") == "record (streams/processor.py)"
    assert (
        frame_name("send (/work/.venv/lib/python3.11/site-packages/aiokafka/producer/producer.py)")
        == "send (aiokafka/producer/producer.py)"
    )
    assert frame_name("run (/usr/lib/python3.11/asyncio/events.py:80)") == "run (asyncio/events.py)"
    assert frame_name("<no frame>") == "<no frame>"


def test_inclusive_counts_a_function_once_per_stack_and_self_only_at_the_top() -> None:
    lines = [
        "main (a.py);loop (a.py);record (p.py);decode (s.py) 6",
        "main (a.py);loop (a.py);record (p.py) 2",
        "main (a.py);loop (a.py);send (k.py);send (k.py) 2",
        "a malformed line",
        "",
    ]
    total, entries = summarise(lines)
    assert total == 10
    by_name = {e.function: e for e in entries}
    assert by_name["record (p.py)"] == Entry("record (p.py)", 0.8, 0.2)
    assert by_name["decode (s.py)"] == Entry("decode (s.py)", 0.6, 0.6)
    # Recursion counts once on the stack.
    assert by_name["send (k.py)"] == Entry("send (k.py)", 0.2, 0.2)
    # On every stack and never at the top: no line.
    assert "main (a.py)" not in by_name and "loop (a.py)" not in by_name
    assert [e.function for e in entries][:2] == ["record (p.py)", "decode (s.py)"]


@pytest.mark.parametrize("lines", [[], ["garbage"], ["x (a.py) notanumber"]])
def test_no_samples_no_entries(lines: list[str]) -> None:
    assert summarise(lines) == (0, [])


def test_own_time_ranks_the_functions_at_the_top() -> None:
    lines = ["m (a.py);x (b.py) 3", "m (a.py);y (c.py) 5", "m (a.py) 2"]
    assert [e.function for e in by_own(lines)] == ["y (c.py)", "x (b.py)", "m (a.py)"]
