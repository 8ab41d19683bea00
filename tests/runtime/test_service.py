"""The one service lifecycle: SIGTERM mid-batch stops within the timeout and flushes; a service
that does not stop is cancelled; a fatal error exits non-zero; close always runs."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from runtime.errors import FleetPulseError
from runtime.service import EXIT_FAILED, EXIT_OK, Service, serve


class Batches(Service):
    """Takes items in batches of 0.3 s; holds them until `close()` flushes them."""

    name = "batches"

    def __init__(self, *, ignore_stop: bool = False, fail: bool = False) -> None:
        super().__init__()
        self.ignore_stop, self.fail = ignore_stop, fail
        self.held: list[int] = []
        self.flushed: list[int] = []
        self.in_batch = asyncio.Event()
        self.closed = False

    async def run(self) -> None:
        n = 0
        while self.ignore_stop or not self.stopping.is_set():
            self.in_batch.set()
            await asyncio.sleep(0.3)  # a batch in hand: finished, not abandoned
            self.held += [n, n + 1]
            n += 2
            if self.fail and n > 4:
                raise FleetPulseError("the database refused the connection")

    async def close(self) -> None:
        self.flushed, self.held = self.flushed + self.held, []
        self.closed = True


async def _signal_when_busy(service: Batches, sig: signal.Signals = signal.SIGTERM) -> float:
    await service.in_batch.wait()
    await asyncio.sleep(0.1)  # mid-batch
    os.kill(os.getpid(), sig)
    return time.monotonic()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_mid_batch_stops_within_the_timeout_and_flushes(sig: signal.Signals) -> None:
    service = Batches()
    task = asyncio.create_task(serve(service, stop_timeout=2))
    sent = await _signal_when_busy(service, sig)
    assert await task == EXIT_OK
    assert time.monotonic() - sent < 2
    assert service.closed and service.flushed == list(range(len(service.flushed)))
    assert service.flushed and not service.held  # the batch in hand finished and was flushed


async def test_a_service_that_does_not_stop_is_cancelled_after_the_timeout() -> None:
    service = Batches(ignore_stop=True)
    task = asyncio.create_task(serve(service, stop_timeout=0.5))
    sent = await _signal_when_busy(service)
    assert await task == EXIT_FAILED
    assert 0.5 <= time.monotonic() - sent < 1.5 and service.closed


async def test_a_second_signal_cancels_at_once() -> None:
    service = Batches(ignore_stop=True)
    task = asyncio.create_task(serve(service, stop_timeout=30))
    sent = await _signal_when_busy(service)
    await asyncio.sleep(0.1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await task == EXIT_FAILED
    assert time.monotonic() - sent < 2 and service.closed


async def test_a_fatal_error_exits_non_zero_and_still_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = Batches(fail=True)
    assert await serve(service, stop_timeout=2) == EXIT_FAILED
    assert service.closed and service.flushed == [0, 1, 2, 3, 4, 5]
    assert "batches failed: the database refused the connection" in caplog.text


async def test_a_failed_start_exits_non_zero() -> None:
    class NoStart(Batches):
        async def start(self) -> None:
            raise ConnectionRefusedError(111, "refused")

    service = NoStart()
    assert await serve(service, stop_timeout=2) == EXIT_FAILED
    assert service.closed and not service.in_batch.is_set()


async def test_an_expected_start_failure_is_raised_for_the_command_line() -> None:
    class NoDatabase(Batches):
        async def start(self) -> None:
            raise FleetPulseError("cannot connect to postgresql://fleetpulse@127.0.0.1:1/x")

    service = NoDatabase()
    with pytest.raises(FleetPulseError, match="cannot connect"):
        await serve(service, stop_timeout=2)
    assert service.closed and not service.in_batch.is_set()


async def test_signal_handlers_are_removed_afterwards() -> None:
    service = Batches()
    service.stop()
    assert await serve(service, stop_timeout=1) == EXIT_OK
    loop = asyncio.get_running_loop()
    assert not loop.remove_signal_handler(signal.SIGTERM)  # nothing of ours left installed
