"""The one lifecycle of a long-running FleetPulse service (all but the Faust stream worker,
whose lifecycle Faust gives).

    class Sink(Service):
        name = "sink"
        async def start(self) -> None: ...   # connect; raise to fail the start
        async def run(self) -> None: ...     # work until `self.stopping` is set, then return
        async def close(self) -> None: ...   # flush what is held, release clients

    sys.exit(run_service(Sink(settings), settings))

`run_service` serves the service's /metrics and /health (`runtime/telemetry.py`, on the
settings' `metrics_port`), calls `start()`, then `run()`. SIGTERM or SIGINT sets `stopping`;
`run()` is expected to notice, finish the batch in hand and return. If it has not returned within
`stop_timeout` it is cancelled (a second signal cancels it at once). `close()` runs in every
case, bounded by the same timeout. Exit status: 0 after a clean stop, 1 after a fatal error
(logged as one line, with the traceback only for an unexpected one), 1 as well when the
service had to be cancelled. A `FleetPulseError` from `start()` (no database, a port taken)
is raised to the caller, which prints it as one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import ClassVar

from runtime.errors import FleetPulseError, describe
from runtime.settings import ServiceSettings
from runtime.telemetry import serve_telemetry, telemetry

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


class Service:
    """Base of a long-running service: `start`, `run` until `stopping`, `close`."""

    name: ClassVar[str] = "service"

    def __init__(self) -> None:
        self.stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask `run()` to finish (signal handlers call this; safe to call twice)."""
        self.stopping.set()

    async def start(self) -> None:
        """Called once before `run()`; an exception here fails the service."""

    async def run(self) -> None:
        """Do the work until `stopping` is set, then return after the batch in hand."""
        await self.stopping.wait()

    async def close(self) -> None:
        """Called once after `run()` returned or was cancelled: flush, release clients."""


def run_service(service: Service, settings: ServiceSettings) -> int:
    """Run `service` in a new event loop until it stops; returns the exit status."""
    server = serve_telemetry(telemetry(service.name), settings.metrics_host, settings.metrics_port)
    try:
        return asyncio.run(serve(service, stop_timeout=settings.stop_timeout))
    finally:
        if server is not None:
            server.shutdown()


async def serve(service: Service, *, stop_timeout: float = 10.0) -> int:
    """`run_service` in a running loop (tests call this)."""
    loop = asyncio.get_running_loop()
    signals = _Signals(service)
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, signals.received, sig)
            installed.append(sig)
    try:
        try:
            await service.start()
        except FleetPulseError:
            # A service that cannot start (no database, a port taken, a bad key) is the
            # caller's error: the command line prints it as one line, exit status 1.
            await _close(service, stop_timeout)
            raise
        except Exception as exc:
            log.exception("%s failed to start: %s", service.name, describe(exc))
            await _close(service, stop_timeout)
            return EXIT_FAILED
        status = await _run(service, stop_timeout, signals)
        if not await _close(service, stop_timeout):
            status = EXIT_FAILED
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    if status == EXIT_OK:
        log.info("%s stopped", service.name)
    return status


class _Signals:
    """The first SIGTERM/SIGINT asks the service to stop; the second cancels its run."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.count = 0
        self.runner: asyncio.Task[None] | None = None

    def received(self, sig: signal.Signals) -> None:
        self.count += 1
        name = self.service.name
        if self.count == 1:
            log.info("%s stopping (%s)", name, sig.name)
            self.service.stop()
        elif self.runner is not None:
            log.warning("%s: second %s, cancelling", name, sig.name)
            self.runner.cancel()


async def _run(service: Service, stop_timeout: float, signals: _Signals) -> int:
    """`service.run()` until it returns, or is cancelled `stop_timeout` after the stop was
    asked; the exit status."""
    runner = signals.runner = asyncio.create_task(service.run(), name=f"{service.name}-run")
    stop_wait = asyncio.create_task(service.stopping.wait())
    status = EXIT_OK
    try:
        done, _ = await asyncio.wait({runner, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if runner not in done:
            # Stopping: the run loop has `stop_timeout` to finish the batch in hand.
            finished, _ = await asyncio.wait({runner}, timeout=stop_timeout)
            if not finished:
                log.error("%s did not stop within %.0f s: cancelled", service.name, stop_timeout)
                runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        if runner.cancelled():  # the timeout, or a second signal
            status = EXIT_FAILED
    except asyncio.CancelledError:
        if signals.count < 2:
            raise
        status = EXIT_FAILED
    except FleetPulseError as exc:
        log.error("%s failed: %s", service.name, exc)
        status = EXIT_FAILED
    except Exception as exc:
        log.exception("%s failed: %s", service.name, describe(exc))
        status = EXIT_FAILED
    finally:
        stop_wait.cancel()
    return status


async def _close(service: Service, timeout: float) -> bool:
    """`service.close()`, bounded; False if it failed or timed out (logged)."""
    try:
        await asyncio.wait_for(service.close(), timeout)
    except TimeoutError:
        log.error("%s: close did not finish within %.0f s", service.name, timeout)
        return False
    except Exception as exc:
        log.error("%s: close failed: %s", service.name, describe(exc))
        return False
    return True
