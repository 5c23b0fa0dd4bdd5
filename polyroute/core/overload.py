"""Telling the gateway's own trouble from an upstream's.

A process that runs out of file descriptors, or whose event loop runs behind, sees its
upstream calls fail or time out: blamed on the upstream, that would cool healthy
entries down and leave them out after the shortage is over. These tests say when a
failure is the process's own (:class:`~polyroute.core.errors.GatewayOverloaded`).

:data:`LOOP_LAG` measures how far behind schedule the event loop runs, once started
(``polyroute serve`` starts it); a library that never starts it never calls a timeout
its own.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections import deque

from polyroute.core.errors import GatewayOverloaded

OWN_SHORTAGES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""The errors of a socket this process could not make: out of descriptors (its own
limit, or the system's) or of kernel memory. Nothing was sent to the upstream."""

BEHIND_SHARE = 0.5
"""A first-chunk timeout is the gateway's own when its loop was behind schedule for at
least this share of the wait: an upstream's chunk may have sat unread that long."""


def own_shortage(error: BaseException, provider: str | None = None) -> GatewayOverloaded | None:
    """``error`` as the gateway's own trouble when it is a socket the process could
    not make (aiohttp's connector errors carry the ``errno``), else ``None``."""
    if not isinstance(error, OSError) or error.errno not in OWN_SHORTAGES:
        return None
    reason = errno.errorcode.get(error.errno or 0, "")
    return GatewayOverloaded(
        f"no socket for a new upstream connection ({reason}: the process's file "
        "descriptors or the system's memory ran out)",
        cause="file_descriptors",
        provider=provider,
    )


def own_timeout(
    since: float, limit: float | None, *, waiting_for_slot: bool, provider: str | None
) -> GatewayOverloaded | None:
    """A first-chunk timeout (the wait began at ``since``, a :func:`time.monotonic`
    reading) as the gateway's own trouble: it was still waiting for one of its own
    connection slots to the entry, or its event loop was behind for most of the wait.
    ``None``: the upstream's."""
    if waiting_for_slot:
        return GatewayOverloaded(
            f"no free connection to the entry within the first-chunk timeout of {limit} s "
            "(its connection_limit is reached)",
            cause="connection_slot",
            provider=provider,
        )
    share = LOOP_LAG.behind_share(since)
    if share >= BEHIND_SHARE:
        return GatewayOverloaded(
            f"its event loop was behind schedule for {share:.0%} of the first-chunk "
            f"timeout of {limit} s",
            cause="loop_lag",
            provider=provider,
        )
    return None


class LoopLag:
    """How far behind schedule the running event loop is: a callback due every
    ``period`` seconds notes how late it ran, for the last ``keep_s`` seconds.

    :meth:`start` and :meth:`stop` are counted (two gateways in one process share it);
    it samples the loop that was running at the first :meth:`start`.
    """

    def __init__(self, period: float = 0.1, keep_s: float = 120.0) -> None:
        self.period = period
        self._samples: deque[tuple[float, float]] = deque(maxlen=int(keep_s / period))
        """``(when, how late)`` per tick, in :func:`time.monotonic` seconds."""
        self._users = 0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Begin sampling the running loop (a no-op past the first user)."""
        self._users += 1
        if self._handle is None:
            self._samples.clear()
            self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        """Stop sampling once the last user stops."""
        self._users = max(0, self._users - 1)
        if not self._users and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = time.monotonic() + self.period
        self._handle = loop.call_later(self.period, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        self._samples.append((now, max(0.0, now - self._due)))
        self._schedule(loop)

    def recent_ms(self, window_s: float = 1.0) -> float:
        """The worst lateness of the last ``window_s`` seconds, and of the tick now
        overdue, in milliseconds (0 while not running)."""
        if self._handle is None:
            return 0.0
        now = time.monotonic()
        worst = max(0.0, now - self._due)
        for when, late in reversed(self._samples):
            if when < now - window_s:
                break
            worst = max(worst, late)
        return worst * 1000

    def behind_share(self, since: float) -> float:
        """The share of the time from ``since`` (a :func:`time.monotonic` reading) to
        now that the loop spent behind schedule (0 while not running)."""
        now = time.monotonic()
        if self._handle is None or now <= since:
            return 0.0
        behind = max(0.0, now - max(self._due, since))
        for when, late in reversed(self._samples):
            if when <= since:
                break
            behind += min(late, when - since)  # a late tick covers [when - late, when]
        return min(1.0, behind / (now - since))


LOOP_LAG = LoopLag()
"""The process's loop-lag monitor (one event loop serves a gateway process)."""
