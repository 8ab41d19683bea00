"""The host sampler on this machine: one valid event per call, the first one primed."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime

import pytest

from producers.agent.host import (
    HostSampler,
    SchedstatReader,
    read_cpu_ns_psutil,
    read_cpu_ns_schedstat,
)
from tests.factories import SERVER_ID


def test_samples_are_valid_events_of_this_host() -> None:
    sampler = HostSampler(top_processes=5)
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # some CPU of our own, so we are among the busiest
        pass
    event = sampler.sample(SERVER_ID, datetime(2026, 12, 1, tzinfo=UTC))
    assert event.server_id == SERVER_ID
    assert 0 <= event.cpu_usage <= 100 and 0 < event.memory_usage <= 100
    assert 0 < event.disk_usage <= 100
    assert event.network_rx >= 0 and event.network_tx >= 0
    assert event.processes is not None and 0 < len(event.processes) <= 5
    assert os.getpid() in {p.pid for p in event.processes}


def test_no_processes_when_none_are_asked_for() -> None:
    event = HostSampler(top_processes=0).sample(SERVER_ID, datetime(2026, 12, 1, tzinfo=UTC))
    assert event.processes == []


def test_a_wrong_mount_fails_at_once_with_the_path() -> None:
    with pytest.raises(FileNotFoundError, match="/no/such/mount"):
        HostSampler(disk_mount="/no/such/mount")


def test_both_cpu_readers_see_this_process() -> None:
    me = os.getpid()
    by_schedstat, by_psutil = read_cpu_ns_schedstat(), read_cpu_ns_psutil()
    assert by_schedstat[me] > 0 and by_psutil[me] > 0


def test_the_kept_open_reader_reads_what_opening_each_file_reads() -> None:
    reader = SchedstatReader()
    try:
        reader()
        me = os.getpid()
        before = reader()[me]
        deadline = time.process_time() + 0.05
        while time.process_time() < deadline:
            pass
        kept, fresh = reader(), read_cpu_ns_schedstat()
        assert kept[me] > before  # a re-read file gives the time now, not the first reading
        assert fresh[me] >= kept[me]
        assert {me, 1} <= set(kept)
    finally:
        reader.close()


def test_the_file_of_a_process_that_exited_is_closed() -> None:
    reader = SchedstatReader()
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in reader()
        child.kill()
        child.wait()
        assert child.pid not in reader()
        assert child.pid not in reader._fds
    finally:
        reader.close()
    assert reader._fds == {}


def test_past_the_limit_files_are_opened_and_closed_each_time() -> None:
    reader = SchedstatReader(max_open=3)
    assert os.getpid() in reader() and len(reader._fds) == 3
    before = len(os.listdir("/proc/self/fd"))
    reader()
    assert len(os.listdir("/proc/self/fd")) == before
    reader.close()
