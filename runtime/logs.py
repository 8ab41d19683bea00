"""Logging for every service, and outages logged the way an operator reads them: one line
when a dependency goes away, then at most one per interval with a count, one when it is back.

`Outage` is what a retry loop reports to. `QuietRepeats` is a logging filter for client
libraries that log every reconnect attempt themselves (aiokafka writes about ten lines a second
while a broker is away): the first line of each kind passes, repeats within the interval are
counted, and the next one that passes says how many were held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from runtime.errors import describe

#: Seconds between "still unavailable" lines (and between repeats `QuietRepeats` lets pass).
DEFAULT_INTERVAL = 30.0


class Outage:
    """The availability of one dependency, as one service sees it (also read by /health)."""

    def __init__(
        self,
        name: str,
        log: logging.Logger,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.log = log
        self.interval = interval
        self._clock = clock
        self.down_since: float | None = None
        self.failures = 0  # during the current outage
        self._last_line = 0.0
        self._held = 0

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failed(self, exc: BaseException | str, *, detail: str = "") -> None:
        """Report a failed attempt: logged at the first, then once per interval."""
        now = self._clock()
        reason = exc if isinstance(exc, str) else describe(exc)
        extra = f"; {detail}" if detail else ""
        self.failures += 1
        if self.down_since is None:
            self.down_since = self._last_line = now
            self._held = 0
            self.log.warning("%s unavailable: %s%s", self.name, reason, extra)
            return
        self._held += 1
        if now - self._last_line >= self.interval:
            self.log.warning(
                "%s still unavailable after %.0f s (%d failed attempts): %s%s",
                self.name,
                now - self.down_since,
                self.failures,
                reason,
                extra,
            )
            self._last_line, self._held = now, 0

    def ok(self) -> None:
        """Report a success: one line if the dependency was down."""
        if self.down_since is None:
            return
        self.log.info(
            "%s back after %.1f s (%d failed attempts)",
            self.name,
            self._clock() - self.down_since,
            self.failures,
        )
        self.down_since = None
        self.failures = 0


#: Client libraries that log every reconnect attempt themselves.
CHATTY_LIBRARIES = ("aiokafka", "kafka", "faust", "mode")


class QuietRepeats(logging.Filter):
    """For records of the `libraries` loggers (and their children): the first of each (logger,
    message template) passes, then at most one per `interval`, annotated with how many were
    held back meanwhile. Other records pass untouched."""

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        libraries: tuple[str, ...] = CHATTY_LIBRARIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self._prefixes = tuple(f"{lib}." for lib in libraries)
        self._libraries = libraries
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name not in self._libraries and not name.startswith(self._prefixes):
            return True
        key = (name, str(record.msg))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= self.interval:
            held, since = (0, 0.0) if seen is None else (seen[1], now - seen[0])
            self._seen[key] = (now, 0)
            if held:
                record.msg = f"{record.msg} ({held} more like this in the last {since:.0f} s)"
            if len(self._seen) > 1000:  # messages with unbounded variety: forget the oldest
                self._seen.pop(next(iter(self._seen)))
            return True
        self._seen[key] = (seen[0], seen[1] + 1)
        return False


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO, interval: float = DEFAULT_INTERVAL) -> None:
    """One line per record on stderr, the client libraries' repeats held back (idempotent)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT)
    root.setLevel(level)
    # aiokafka's warnings are about its own retries (which ours report as outages).
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    for handler in root.handlers:
        if not any(isinstance(f, QuietRepeats) for f in handler.filters):
            handler.addFilter(QuietRepeats(interval))
