"""Keeping a flood of one error out of the log.

Under trouble the same warning or error can come thousands of times a second (asyncio's
``socket.accept() out of system resource``, aiohttp's ``Error handling request``, each
with a traceback), and writing them costs the CPU the gateway is short of. The
libraries' loggers get a :class:`RepeatFilter`: the first record of a kind passes, the
next ones within ``window_s`` are counted, and the first after the window says how many
were not logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

LIBRARY_LOGGERS = (
    "asyncio",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
)
"""The loggers whose records reach the gateway's stderr unformatted (a filter on a
logger applies only to records logged on that logger, not its children)."""


class RepeatFilter(logging.Filter):
    """Passes one record of a kind (logger, level, message template, exception type)
    per ``window_s`` seconds; the one that opens a new window tells how many of its
    kind the last one held back. Records below WARNING all pass."""

    def __init__(
        self,
        window_s: float = 10.0,
        kinds: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._kinds = kinds
        self._seen: dict[tuple[object, ...], list[float]] = {}
        """kind -> [when its window opened, records held back since]"""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        error = record.exc_info[0] if record.exc_info else None
        kind = (record.name, record.levelno, str(record.msg), error)
        now = self._clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            held = int(seen[1])
            record.msg = f"{record.getMessage()} ({held} more like this in the last "
            record.msg += f"{self.window_s:g} s were not logged)"
            record.args = None
        if len(self._seen) >= self._kinds:
            self._seen.clear()  # many kinds is no flood of one: start again
        self._seen[kind] = [now, 0]
        return True


def quiet_floods(window_s: float = 10.0) -> Callable[[], None]:
    """Give the libraries' loggers (:data:`LIBRARY_LOGGERS`) a :class:`RepeatFilter` of
    ``window_s`` seconds; returns what takes it off again."""
    repeats = RepeatFilter(window_s)
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    for logger in loggers:
        logger.addFilter(repeats)

    def undo() -> None:
        for logger in loggers:
            logger.removeFilter(repeats)

    return undo
