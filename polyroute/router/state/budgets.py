"""Spend budgets (USD) for gateway keys and teams: limits per UTC period, reservations
held until they are settled, and the arithmetic of one process (docs/shared-state.md).

A scope (``key:<id>``, ``team:<id>``) has a :class:`BudgetLimit`. A request reserves its
expected cost on all its scopes at once, then settles at its actual cost (settled spend
is the truth) or releases the reservation. A scope has room for an amount when
``settled + reserved + amount <= usd``, all in the scope's current period window.

Amounts are counted in whole micro-dollars (rounded to the nearest), here and in Redis:
integer sums are exact and the same in Python and Lua, where float sums would drift
with every reservation added and taken away again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from polyroute.core import periods
from polyroute.core.periods import PERIODS, Period, period_window, utc_now

MICROS_PER_USD = 1_000_000
KEPT_AFTER_PERIOD = timedelta(days=1)
"""A period's keys outlive its end by this much: hosts' clocks may disagree a little on
when it ended, and a request reserved just before the end settles just after it."""

Clock = Callable[[], float]
UtcClock = Callable[[], datetime]


def to_micros(usd: float) -> int:
    return round(usd * MICROS_PER_USD)


def to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD


def check_usd(what: str, usd: float) -> None:
    """Raise ``ValueError`` unless ``usd`` is a finite amount of at least 0."""
    if not (math.isfinite(usd) and usd >= 0):
        raise ValueError(f"{what} must be a finite amount of USD of at least 0, not {usd!r}")


def check_ttl(ttl_s: float) -> None:
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"a reservation's ttl_s must be positive and finite, not {ttl_s!r}")


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """At most ``usd`` of settled spend per ``period``: a UTC ``day`` (from midnight),
    ``week`` (from Monday 00:00), ``month`` (from the 1st, 00:00), or in ``total``."""

    usd: float
    period: Period
    micros: int = field(init=False, repr=False, compare=False)
    """``usd`` in micro-dollars (every reservation compares against it)."""

    def __post_init__(self) -> None:
        check_usd("a budget's usd", self.usd)
        if self.period not in PERIODS:
            raise ValueError(f"a budget's period is one of {PERIODS}, not {self.period!r}")
        object.__setattr__(self, "micros", to_micros(self.usd))


class ScopeWindow(NamedTuple):
    """One scope under its limit, in the period window current when it was asked."""

    scope: str
    limit: BudgetLimit
    window: str
    ends_at: datetime | None

    @property
    def name(self) -> str:
        """``<scope>:<window id>``: what this window's keys end with."""
        return f"{self.scope}:{self.window}"

    @property
    def expire_at_ms(self) -> int:
        """When its keys may go (Unix ms), or 0: never (``total``)."""
        if self.ends_at is None:
            return 0
        return int((self.ends_at + KEPT_AFTER_PERIOD).timestamp() * 1000)


def scope_windows(limits: Mapping[str, BudgetLimit], now: datetime) -> tuple[ScopeWindow, ...]:
    """Every scope of ``limits`` in its window current at ``now``, in the mapping's order."""
    windows = []
    for scope, limit in limits.items():
        window = period_window(limit.period, now)
        windows.append(ScopeWindow(scope, limit, window.id, window.ends_at))
    return tuple(windows)


class BudgetDenied(NamedTuple):
    """No room on ``scope`` for the amount asked (the first such scope), and what is left
    there (never below 0)."""

    scope: str
    remaining_usd: float


@dataclass(slots=True, eq=False)
class Reservation:
    """An amount held on every scope of a request until :meth:`RoutingState.settle` or
    :meth:`RoutingState.release_reservation` (at most once: later calls do nothing), or
    until ``ttl_s`` passes (its process died, say)."""

    id: str
    windows: tuple[ScopeWindow, ...]
    amount_usd: float
    remaining_usd: dict[str, float]
    """Scope -> what is left there with this reservation counted (for a response header)."""
    ttl_s: float
    is_shared: bool = False
    """Held in the shared store (not decided by this process alone)."""
    is_done: bool = False
    """Settled or released already."""
    tallies: tuple[_Tally, ...] = field(default=(), repr=False)
    """Where this process holds it (one per window; empty: held in the shared store)."""

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(window.scope for window in self.windows)

    @property
    def micros(self) -> int:
        return to_micros(self.amount_usd)


@dataclass(slots=True)
class _Tally:
    """One scope's figures in one period window, as this process knows them."""

    window: str
    seen: int = 0
    """Settled, as the shared store last said (always 0 for a process alone)."""
    own: int = 0
    """Settled here and not yet in ``seen``."""
    held: int = 0
    """The sum of ``holds``."""
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Reservation id -> (micro-dollars, deadline on the monotonic clock)."""
    next_deadline: float = math.inf
    replaced: bool = False
    """A new period's tally took its place: what it counts no longer matters."""

    def purge(self, now: float) -> None:
        """Stop counting the reservations whose deadline has passed."""
        if now < self.next_deadline:
            return
        for expired in [rid for rid, (_, deadline) in self.holds.items() if deadline <= now]:
            self.held -= self.holds.pop(expired)[0]
        self.next_deadline = min(
            (deadline for _, deadline in self.holds.values()), default=math.inf
        )

    def left(self, limit: BudgetLimit, now: float, shared_held: int = 0) -> int:
        """Micro-dollars left under ``limit``, with ``shared_held`` held elsewhere."""
        if now >= self.next_deadline:
            self.purge(now)
        return limit.micros - self.seen - self.own - self.held - shared_held

    def room(self, limit: BudgetLimit, now: float, share: int) -> int:
        """What this process may still reserve: of what the shared store's figures leave,
        its ``share``-th part (all of it for a process alone)."""
        if now >= self.next_deadline:
            self.purge(now)
        return (limit.micros - self.seen) // share - self.own - self.held

    def hold(self, rid: str, micros: int, deadline: float) -> None:
        self.holds[rid] = (micros, deadline)
        self.held += micros
        if deadline < self.next_deadline:
            self.next_deadline = deadline


class SpendLedger:
    """Budgets as this process alone knows them: the whole truth of the memory backend,
    and the mirror a shared backend decides from while its store is unreachable.
    ``clock`` (monotonic: reservations' deadlines) and ``utc_now`` (period windows) are
    injectable for tests."""

    def __init__(self, clock: Clock = time.monotonic, utc_now: UtcClock = utc_now) -> None:
        self.clock = clock
        self.utc_now = utc_now
        # Whether kept windows are still current is asked of every request: in Unix
        # seconds, without making a datetime (the injected clock's, when one is given).
        self._wall: Clock = (
            time.time if utc_now is periods.utc_now else lambda: utc_now().timestamp()
        )
        self._tallies: dict[tuple[str, Period], _Tally] = {}
        """One per scope and period: a new window replaces the last one's figures."""
        # Every request of a key asks for the same windows and tallies until a period
        # ends: both are kept, by the identity of the limits and of the windows.
        self._windows: dict[int, tuple[Mapping[str, BudgetLimit], _Current]] = {}
        self._held_on: dict[int, tuple[tuple[ScopeWindow, ...], int, tuple[_Tally, ...]]] = {}
        self._replaced = 0
        """Tallies replaced by a new period's so far (a kept tuple of older ones is stale)."""

    def windows(self, limits: Mapping[str, BudgetLimit]) -> tuple[ScopeWindow, ...]:
        """Every scope of ``limits`` in its window current now (the same tuple, asked
        again with the same ``limits`` while those windows last)."""
        kept = self._windows.get(id(limits))
        if kept is not None and kept[0] is limits and kept[1].holds(self._wall()):
            return kept[1].windows
        now = self.utc_now()
        windows = scope_windows(limits, now)
        if len(self._windows) >= _KEPT:
            self._windows.clear()  # bounded: a reload or new keys make new limits
        self._windows[id(limits)] = (limits, _Current.of(windows, limits, now))
        return windows

    def reserve(
        self, windows: tuple[ScopeWindow, ...], micros: int, ttl_s: float, rid: str, share: int = 1
    ) -> Reservation | BudgetDenied:
        """Hold ``micros`` on every window, or on none (the first without room is named)."""
        now = self.clock()
        tallies = self._tallies_of(windows)
        share = max(1, share)
        for window, tally in zip(windows, tallies, strict=True):
            if micros > tally.room(window.limit, now, share):
                return BudgetDenied(window.scope, to_usd(max(0, tally.left(window.limit, now))))
        remaining = {}
        deadline = now + ttl_s
        for window, tally in zip(windows, tallies, strict=True):
            tally.hold(rid, micros, deadline)
            remaining[window.scope] = to_usd(max(0, tally.left(window.limit, now)))
        return Reservation(rid, windows, to_usd(micros), remaining, ttl_s, tallies=tallies)

    def finish(self, reservation: Reservation, micros: int) -> None:
        """Stop holding ``reservation`` here and count ``micros`` of settled spend, in the
        windows it was reserved in (a window since replaced by a new period: nothing)."""
        tallies = reservation.tallies or [self._current(w) for w in reservation.windows]
        rid = reservation.id
        for tally in tallies:
            if tally is not None and not tally.replaced:
                held = tally.holds.pop(rid, None)
                if held is not None:
                    tally.held -= held[0]
                tally.own += micros

    def observe(self, window: ScopeWindow, settled: int) -> None:
        """The shared store says ``settled`` micro-dollars are settled in ``window``."""
        tally = self._tally(window)
        if tally.window == window.window:
            tally.seen = settled

    def confirm(self, window: ScopeWindow, micros: int, settled: int) -> None:
        """``micros`` counted here reached the shared store, which now says ``settled``."""
        tally = self._current(window)
        if tally is not None:
            tally.own -= micros
            tally.seen = settled

    def spent(self, scope: str, limit: BudgetLimit) -> int:
        """Settled in the current window, as far as this process knows."""
        (window,) = self.windows({scope: limit})
        tally = self._current(window)
        return 0 if tally is None else tally.seen + tally.own

    def left(self, window: ScopeWindow, shared_held: int = 0) -> int:
        """Micro-dollars left in ``window`` (may be below 0 after an overshoot)."""
        return self._tally(window).left(window.limit, self.clock(), shared_held)

    def _current(self, window: ScopeWindow) -> _Tally | None:
        tally = self._tallies.get((window.scope, window.limit.period))
        return tally if tally is not None and tally.window == window.window else None

    def _tally(self, window: ScopeWindow) -> _Tally:
        key = (window.scope, window.limit.period)
        tally = self._tallies.get(key)
        if tally is None or tally.window < window.window:
            if tally is not None:
                tally.replaced = True
                self._replaced += 1
            tally = self._tallies[key] = _Tally(window.window)
        return tally

    def _tallies_of(self, windows: tuple[ScopeWindow, ...]) -> tuple[_Tally, ...]:
        """The tally of each window (made when missing)."""
        kept = self._held_on.get(id(windows))
        if kept is not None and kept[0] is windows and kept[1] == self._replaced:
            return kept[2]
        tallies = tuple(self._tally(window) for window in windows)
        if len(self._held_on) >= _KEPT:
            self._held_on.clear()
        self._held_on[id(windows)] = (windows, self._replaced, tallies)
        return tallies


_KEPT = 1024
"""Limits and windows kept at most (each budgeted key's, until a period ends)."""


class _Current(NamedTuple):
    """Windows as they were made, and the span of time in which they are all current
    (Unix seconds; ``until`` infinite for ``total`` alone)."""

    windows: tuple[ScopeWindow, ...]
    since: float
    until: float

    @classmethod
    def of(
        cls, windows: tuple[ScopeWindow, ...], limits: Mapping[str, BudgetLimit], now: datetime
    ) -> _Current:
        starts = [period_window(limit.period, now).starts_at for limit in limits.values()]
        since = max(starts, default=now)
        ends = [window.ends_at for window in windows if window.ends_at is not None]
        return cls(windows, since.timestamp(), min(ends).timestamp() if ends else math.inf)

    def holds(self, now: float) -> bool:
        return self.since <= now < self.until
