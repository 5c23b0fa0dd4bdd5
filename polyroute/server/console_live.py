"""The console's live figures (docs/console.md): what the gateway's requests did in
each of the last 3600 seconds, for the charts, and a snapshot of every entry, for the
live table. All in memory, sampled once a second; nothing is written anywhere.

A :class:`Tally` is told by the gateway of each routed request as it ends, from the
facts its accounting has at hand (not a :class:`~polyroute.RequestRecord`: building one
for every request cost about 20 us where the log does not need it), and adds to the
running second's counters (a few additions; no lock, no I/O). :meth:`Tally.tick` closes
the second into the history. The entry snapshot is read through the router's front door
(``Router.entry_status``), only while someone watches.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from polyroute.core.attempts import Attempt
from polyroute.router.observe import error_text
from polyroute.router.router import EntryStatus

HISTORY_SECONDS = 3600
"""The charts' span: the last hour, one point a second."""
WINDOW_SECONDS = 60
"""The span of an entry's "limits used": the last minute, as ``rpm`` and ``tpm`` count."""
MODELS_SHOWN = 12
"""An entry that discovered hundreds of models shows these many and a count."""
_SERIES = ("requests", "failed_requests", "errors", "ttft_p50_ms", "ttft_p99_ms", "cost_usd")


@dataclass(slots=True)
class _Second:
    """The counters of the second now running."""

    requests: int = 0
    failed_requests: int = 0
    errors: int = 0
    """Failed attempts: every upstream failure, retried or not."""
    cost_usd: float = 0.0
    ttfts: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _EntryMinute:
    """One entry's attempts and tokens in each of its recent seconds (this gateway's,
    counted as requests end), and its last error."""

    seconds: deque[list[int]] = field(default_factory=deque)
    """``[second, attempts, tokens]``, oldest first."""
    last_error: dict[str, Any] | None = None

    def add(self, second: int, attempts: int, tokens: int) -> None:
        if self.seconds and self.seconds[-1][0] == second:
            self.seconds[-1][1] += attempts
            self.seconds[-1][2] += tokens
        else:
            self.seconds.append([second, attempts, tokens])

    def last_minute(self, now: int) -> tuple[int, int]:
        """Attempts and tokens in the last :data:`WINDOW_SECONDS`."""
        while self.seconds and self.seconds[0][0] <= now - WINDOW_SECONDS:
            self.seconds.popleft()
        return sum(s[1] for s in self.seconds), sum(s[2] for s in self.seconds)


class History:
    """One point a second for the last :data:`HISTORY_SECONDS`, as columns."""

    def __init__(self, span: int = HISTORY_SECONDS) -> None:
        self.last_second: int | None = None
        self.columns: dict[str, deque[float | None]] = {
            name: deque(maxlen=span) for name in _SERIES
        }

    def add(self, second: int, point: dict[str, float | None]) -> None:
        """Append the point of ``second``; seconds skipped since the last (a stalled
        loop) are filled with empty points, so that each column stays one a second."""
        if self.last_second is not None:
            missing = min(second - self.last_second - 1, HISTORY_SECONDS)
            for _ in range(max(0, missing)):
                for name, column in self.columns.items():
                    column.append(None if name.startswith("ttft") else 0)
        self.last_second = second
        for name, column in self.columns.items():
            column.append(point[name])

    def as_json(self) -> dict[str, Any]:
        """``{"end": second of the last point, "step_s": 1, "series": {name: [...]}}``."""
        return {
            "end": self.last_second,
            "step_s": 1,
            "series": {name: list(column) for name, column in self.columns.items()},
        }


class Tally:
    """Told of every routed request as it ends (:meth:`add`); closes each second into
    :attr:`history` at :meth:`tick`."""

    def __init__(self) -> None:
        self.history = History()
        self._second = _Second()
        self._entries: dict[str, _EntryMinute] = {}
        self._now = round(time.time())
        """The second the running counters belong to (moved on by :meth:`tick`)."""

    def add(
        self,
        request_id: str,
        *,
        failed: bool,
        ttft_ms: float | None,
        cost_usd: float | None,
        attempts: Sequence[Attempt],
        provider: str | None,
        tokens: int,
    ) -> None:
        """One routed request that ended: whether it ``failed`` (an error, or a cut
        answer), its first chunk's time, its cost, its attempts, the entry that served
        it and the tokens it used there."""
        second = self._second
        second.requests += 1
        if failed:
            second.failed_requests += 1
        if ttft_ms is not None:
            second.ttfts.append(ttft_ms)
        if cost_usd:
            second.cost_usd += cost_usd
        now, unserved = self._now, provider
        for attempt in attempts:
            entry = self._entry(attempt.provider)
            if attempt.provider == unserved:  # its tokens too: one add, not two
                entry.add(now, 1, tokens)
                unserved = None
            else:
                entry.add(now, 1, 0)
            if attempt.outcome == "failed":
                second.errors += 1
                error = attempt.error
                status = getattr(error, "status", None)
                entry.last_error = {
                    "at": time.time(),
                    "type": type(error).__name__ if error is not None else None,
                    "status_code": status if isinstance(status, int) else None,
                    "message": error_text(error) if error is not None else None,
                    "request_id": request_id,
                }
        if unserved is not None:  # no attempt of this request was its (a replayed answer)
            self._entry(unserved).add(now, 0, tokens)

    def _entry(self, name: str) -> _EntryMinute:
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = _EntryMinute()
        return entry

    def tick(self, second: int) -> dict[str, float | None]:
        """Close the running second as the point of ``second``; that point."""
        closing, self._second = self._second, _Second()
        ttfts = sorted(closing.ttfts)
        point: dict[str, float | None] = {
            "requests": closing.requests,
            "failed_requests": closing.failed_requests,
            "errors": closing.errors,
            "ttft_p50_ms": percentile(ttfts, 0.5),
            "ttft_p99_ms": percentile(ttfts, 0.99),
            "cost_usd": closing.cost_usd,
        }
        self.history.add(second, point)
        self._now = second + 1
        return point

    def entry_rows(self, statuses: Sequence[EntryStatus]) -> list[dict[str, Any]]:
        """The live table: one row per entry, in priority order."""
        return [self._row(status) for status in statuses]

    def _row(self, status: EntryStatus) -> dict[str, Any]:
        minute = self._entries.get(status.name) or _EntryMinute()
        attempts, tokens = minute.last_minute(self._now)
        stats = status.stats
        recent = sorted(stats.recent_ttft)
        return {
            "name": status.name,
            "type": status.type,
            "models": status.models[:MODELS_SHOWN],
            "models_total": len(status.models),
            "circuit": status.health,
            "cooling_down": status.cooling_down,
            "unusable": status.unusable,
            "in_flight": status.in_flight,
            "limits": _limits_used(status, attempts, tokens),
            "attempts_1m": attempts,
            "ttft_p50_ms": _rounded(percentile(recent, 0.5)),
            "ttft_p99_ms": _rounded(percentile(recent, 0.99)),
            "error_rate": round(stats.error_rate, 4),
            "attempts": stats.attempts,
            "last_error": minute.last_error,
        }


def _limits_used(status: EntryStatus, attempts: int, tokens: int) -> list[dict[str, Any]]:
    """Each configured limit and what is used of it: in flight for ``concurrent``
    (every process sharing the state), this gateway's last minute for ``rpm`` and
    ``tpm``."""
    limits = status.limits
    if limits is None:
        return []
    used = (("rpm", limits.rpm, attempts), ("tpm", limits.tpm, tokens),
            ("concurrent", limits.concurrent, status.in_flight))  # fmt: skip
    return [{"name": name, "used": value, "limit": limit} for name, limit, value in used if limit]


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile of ``ordered`` (sorted); ``None`` when empty."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
