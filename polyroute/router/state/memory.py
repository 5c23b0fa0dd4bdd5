"""Routing state kept in this process: the default backend, and the one a shared
backend falls back to while its Redis is unreachable."""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from datetime import datetime

from polyroute.core.periods import utc_now
from polyroute.router.config import Limits, RetryBudget
from polyroute.router.health import CircuitState, HealthStore, InMemoryHealth
from polyroute.router.state.budgets import (
    BudgetDenied,
    BudgetLimit,
    Reservation,
    ScopeWindow,
    SpendLedger,
    check_ttl,
    check_usd,
    to_micros,
    to_usd,
)
from polyroute.router.state.contract import Denied, Lease, Load, TokenEstimate
from polyroute.router.stats import StatsBook

WINDOW_SECONDS = 60.0
"""The window of ``rpm`` and ``tpm``."""
MAX_RECORDS = 10_000
"""Records a process keeps at most (stored responses: docs/shared-state.md)."""
MAX_RECORD_BYTES = 256 * 1024 * 1024
"""Bytes of record keys and values a process keeps at most; also the largest one record."""
MAX_PINS = 100_000
"""Affinity pins a process keeps at most (the least recently written go first)."""

Clock = Callable[[], float]


def window_full(starts: deque[float], now: float, limit: int) -> float | None:
    """A per-minute sliding window of start times, pruned to the last minute: the
    seconds until it has room when it holds ``limit`` already, else ``None``."""
    while starts and now - starts[0] >= WINDOW_SECONDS:
        starts.popleft()
    if len(starts) >= limit:
        return WINDOW_SECONDS - (now - starts[0])
    return None


class EntryLimits:
    """One entry's ``rpm`` (exact sliding window), ``tpm`` (two fixed windows, the
    older weighted by how much of it still overlaps the last minute) and ``concurrent``."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.starts: deque[float] = deque()
        self.tokens: dict[int, int] = {}

    def check(self, now: float, tokens: int, in_flight: int, share: int = 1) -> Denied | None:
        """Why one more attempt ``now`` would go over, with ``in_flight`` running and
        ``share`` processes splitting the limits; ``None`` when it fits."""
        limits = self.limits
        if limits.rpm is not None:
            wait = window_full(self.starts, now, math.ceil(limits.rpm / share))
            if wait is not None:
                return Denied(f"rpm limit {limits.rpm} reached", wait)
        if limits.tpm is not None:
            window = int(now // WINDOW_SECONDS)
            for old in [w for w in self.tokens if w < window - 1]:
                del self.tokens[old]
            overlap = 1.0 - (now % WINDOW_SECONDS) / WINDOW_SECONDS
            used = self.tokens.get(window, 0) + overlap * self.tokens.get(window - 1, 0)
            if used and used + tokens > math.ceil(limits.tpm / share):
                wait = WINDOW_SECONDS - now % WINDOW_SECONDS
                return Denied(f"tpm limit {limits.tpm} reached", wait)
        if limits.concurrent is not None and in_flight >= math.ceil(limits.concurrent / share):
            return Denied(f"concurrent limit {limits.concurrent} reached")
        return None

    def take(self, now: float, tokens: int) -> int:
        """Count one attempt; its token window."""
        window = int(now // WINDOW_SECONDS)
        if self.limits.rpm is not None:
            self.starts.append(now)
        if self.limits.tpm is not None:
            self.tokens[window] = self.tokens.get(window, 0) + tokens
        return window

    def correct(self, window: int, reserved: int, used: int | None) -> None:
        """The attempt used ``used`` tokens where ``reserved`` were counted."""
        if used is not None and window in self.tokens:
            self.tokens[window] += used - reserved


class Budget:
    """The retry budget over one-second buckets: requests in, extra attempts out."""

    def __init__(self, config: RetryBudget) -> None:
        self.config = config
        self.buckets: dict[int, list[int]] = {}
        """Second -> [requests, extra attempts]."""

    def _bucket(self, now: float) -> list[int]:
        second = int(now)
        bucket = self.buckets.get(second)
        if bucket is None:
            horizon = second - self.config.window_seconds
            for old in [s for s in self.buckets if s <= horizon]:
                del self.buckets[old]
            bucket = self.buckets[second] = [0, 0]
        return bucket

    def count_request(self, now: float) -> None:
        self._bucket(now)[0] += 1

    def spend(self, now: float) -> bool:
        bucket = self._bucket(now)
        horizon = int(now) - self.config.window_seconds
        requests = extra = 0
        for second, (req, att) in self.buckets.items():
            if second > horizon:
                requests += req
                extra += att
        config = self.config
        if extra + 1 > config.min_per_second * config.window_seconds + config.ratio * requests:
            return False
        bucket[1] += 1
        return True


class RecordStore:
    """Records kept in this process until they expire. Past ``max_records`` records or
    ``max_bytes`` of keys and values, the oldest written go first. ``clock`` is injectable
    for tests."""

    def __init__(
        self,
        clock: Clock = time.monotonic,
        *,
        max_records: int = MAX_RECORDS,
        max_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError("a record store needs room for at least one record")
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.size = 0
        """Size of the keys (in characters) and values (in bytes) held; Python's own
        overhead, about 200 bytes a record, is not counted."""
        self._clock = clock
        self._records: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        """Key -> (expiry, value), oldest written first."""
        self._expiries: list[tuple[float, str]] = []
        """A heap of (expiry, key): TTLs differ, so the oldest written is not always the
        first to expire. Entries of records since replaced or dropped are skipped."""

    def __len__(self) -> int:
        return len(self._records)

    def check(self, key: str, value: bytes, ttl_s: float) -> None:
        """Raise ``ValueError`` unless ``ttl_s`` is positive and finite and the record fits
        in ``max_bytes``."""
        if not (ttl_s > 0 and math.isfinite(ttl_s)):
            raise ValueError(f"a record's ttl_s must be positive and finite, not {ttl_s!r}")
        if len(key) + len(value) > self.max_bytes:
            raise ValueError(
                f"a record of {len(value)} bytes is over the bound of {self.max_bytes} bytes"
            )

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl_s`` seconds, as the newest record (see
        :meth:`check` for what raises ``ValueError``)."""
        self.check(key, value, ttl_s)
        now = self._clock()
        self.delete(key)
        self._prune(now)
        expires = now + ttl_s
        # A copy at its own size: orjson's bytes may hold several times their length
        # in allocated memory (measured: 8 KB for a 1.6 KB response), kept for hours.
        self._records[key] = (expires, bytes(memoryview(value)))
        self.size += len(key) + len(value)
        heapq.heappush(self._expiries, (expires, key))
        while len(self._records) > self.max_records or self.size > self.max_bytes:
            self.delete(next(iter(self._records)))
        if len(self._expiries) > 2 * len(self._records) + 64:
            # Mostly skipped entries: rebuilt in one pass, paid for by as many puts.
            self._expiries = [(when, name) for name, (when, _) in self._records.items()]
            heapq.heapify(self._expiries)

    def get(self, key: str) -> bytes | None:
        """The value under ``key``; ``None`` when there is none or it has expired."""
        record = self._records.get(key)
        if record is None:
            return None
        if record[0] <= self._clock():
            self.delete(key)
            return None
        return record[1]

    def delete(self, key: str) -> bool:
        """Drop the record under ``key``; whether there was one that had not expired."""
        record = self._records.pop(key, None)
        if record is None:
            return False
        self.size -= len(key) + len(record[1])
        return record[0] > self._clock()

    def _prune(self, now: float) -> None:
        """Drop the records expired by ``now``, at a cost in how many expired (not how many
        are held)."""
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expires, key = heapq.heappop(expiries)
            record = self._records.get(key)
            if record is not None and record[0] == expires:
                self.delete(key)


class MemoryState:
    """:class:`RoutingState` of this process alone. ``share``: how many processes split
    the limits and budgets (a shared backend sets it while it decides alone).
    ``max_records`` and ``max_record_bytes`` bound its :class:`RecordStore`; ``utc_now``
    tells budgets which period it is (injectable for tests, like ``clock``)."""

    def __init__(
        self,
        circuits: HealthStore,
        stats: StatsBook,
        *,
        limits: Mapping[str, Limits],
        budget: RetryBudget | None,
        clock: Clock = time.monotonic,
        max_records: int = MAX_RECORDS,
        max_record_bytes: int = MAX_RECORD_BYTES,
        utc_now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.circuits = circuits
        self.stats = stats
        self.decisions: dict[str, int] = {}
        self.share = 1
        self._clock = clock
        self._limits = {name: EntryLimits(entry) for name, entry in limits.items()}
        self._budget = Budget(budget) if budget is not None else None
        self._in_flight: dict[str, int] = {}
        self._key_starts: dict[str, deque[float]] = {}
        """Gateway key -> start times of its requests in the last minute."""
        self._key_tokens: dict[str, EntryLimits] = {}
        """Gateway key -> its tokens per minute, counted like an entry's ``tpm``."""
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        self._blocked: dict[str, tuple[float, str]] = {}
        """Entries an upstream said are out of requests or tokens: until when, and why."""
        self.records = RecordStore(clock, max_records=max_records, max_bytes=max_record_bytes)
        self.spend = SpendLedger(clock, utc_now)
        self._reservation_ids = itertools.count()

    @property
    def degraded(self) -> bool:
        return False

    def reconfigure(
        self,
        *,
        names: list[str],
        failures: int,
        cooldown_seconds: float,
        limits: Mapping[str, Limits],
        budget: RetryBudget | None,
    ) -> None:
        del names  # every name's circuit is kept: an entry added back finds its own
        if isinstance(self.circuits, InMemoryHealth):  # a custom store keeps its rules
            self.circuits.threshold = failures
            self.circuits.seconds = cooldown_seconds
        kept = self._limits
        self._limits = {}
        for name, entry in limits.items():
            counted = kept.get(name)
            if counted is None:
                counted = EntryLimits(entry)
            counted.limits = entry  # its windows go on: a reload resets no count
            self._limits[name] = counted
        if budget is None:
            self._budget = None
        elif self._budget is None:
            self._budget = Budget(budget)
        else:
            self._budget.config = budget

    # Circuits: the HealthStore given --------------------------------------------

    def state(self, name: str) -> CircuitState:
        return self.circuits.state(name)

    def seconds_left(self, name: str) -> float:
        return self.circuits.seconds_left(name)

    async def admit(self, name: str) -> bool:
        return await self.circuits.admit(name)

    def record_success(self, name: str) -> None:
        self.circuits.record_success(name)

    async def record_failure(self, name: str) -> bool:
        return await self.circuits.record_failure(name)

    def release(self, name: str) -> None:
        self.circuits.release(name)

    # Limits ------------------------------------------------------------------------

    async def acquire(self, name: str, estimate: TokenEstimate) -> Lease | Denied:
        return self.acquire_now(name, estimate)

    def acquire_now(self, name: str, estimate: TokenEstimate) -> Lease | Denied:
        """:meth:`acquire`, without a coroutine."""
        blocked = self.blocked(name)
        if blocked is not None:
            return blocked
        limits = self._limits.get(name)
        if limits is None:
            self.count_in_flight(name, 1)
            return Lease(name, 0, self._end_unlimited)
        now = self._clock()
        tokens = estimate() if limits.limits.tpm is not None else 0
        denied = limits.check(now, tokens, self.in_flight(name), self.share)
        if denied is not None:
            return denied
        window = limits.take(now, tokens)
        self.count_in_flight(name, 1)

        def end(lease: Lease, used: int | None) -> None:
            self.count_in_flight(name, -1)
            limits.correct(window, lease.tokens, used)

        return Lease(name, tokens, end)

    def _end_unlimited(self, lease: Lease, _used: int | None) -> None:
        self.count_in_flight(lease.name, -1)

    def count_in_flight(self, name: str, change: int) -> None:
        self._in_flight[name] = self._in_flight.get(name, 0) + change

    def blocked(self, name: str) -> Denied | None:
        """The upstream's own word that it has nothing left, while it holds."""
        block = self._blocked.get(name)
        if block is None:
            return None
        left = block[0] - self._clock()
        if left <= 0:
            del self._blocked[name]
            return None
        return Denied(block[1], left)

    def block(self, name: str, seconds: float, reason: str) -> None:
        self._blocked[name] = (self._clock() + seconds, reason)

    async def admit_key(self, key: str, rpm: int) -> float | None:
        return self.admit_key_now(key, rpm)

    def admit_key_now(self, key: str, rpm: int) -> float | None:
        """:meth:`admit_key`, without a coroutine."""
        now = self._clock()
        starts = self._key_starts.setdefault(key, deque())
        wait = window_full(starts, now, math.ceil(rpm / self.share))
        if wait is None:
            starts.append(now)
        return wait

    async def admit_key_tokens(self, key: str, tpm: int, tokens: int) -> Lease | Denied:
        return self.admit_key_tokens_now(key, tpm, tokens)

    def admit_key_tokens_now(self, key: str, tpm: int, tokens: int) -> Lease | Denied:
        """:meth:`admit_key_tokens`, without a coroutine."""
        limits = self._key_tokens.get(key)
        if limits is None or limits.limits.tpm != tpm:  # new, or its tpm changed
            kept = limits.tokens if limits is not None else {}
            limits = self._key_tokens[key] = EntryLimits(Limits(tpm=tpm))
            limits.tokens = kept
        now = self._clock()
        denied = limits.check(now, tokens, 0, self.share)
        if denied is not None:
            return denied
        window = limits.take(now, tokens)

        def end(lease: Lease, used: int | None) -> None:
            limits.correct(window, lease.tokens, used)

        return Lease(key, tokens, end)

    # Retry budget ------------------------------------------------------------------

    def count_request(self) -> None:
        if self._budget is not None:
            self._budget.count_request(self._clock())

    async def spend_attempt(self) -> bool:
        return self.spend_attempt_now()

    def spend_attempt_now(self) -> bool:
        """:meth:`spend_attempt`, without a coroutine."""
        return self._budget is None or self._budget.spend(self._clock())

    # Load --------------------------------------------------------------------------

    def in_flight(self, name: str) -> int:
        return self._in_flight.get(name, 0)

    def load(self, name: str) -> Load:
        stats = self.stats[name]
        return Load(self.in_flight(name), stats.latency_ms(), stats.expected_ms())

    async def sync(self) -> None:
        return None

    # Stored records ----------------------------------------------------------------

    async def put_record(self, key: str, value: bytes, ttl_s: float) -> None:
        self.records.put(key, value, ttl_s)

    async def get_record(self, key: str) -> bytes | None:
        return self.records.get(key)

    async def delete_record(self, key: str) -> bool:
        return self.records.delete(key)

    # Spend budgets -----------------------------------------------------------------

    async def reserve(
        self, scopes: Mapping[str, BudgetLimit], amount_usd: float, ttl_s: float
    ) -> Reservation | BudgetDenied:
        return self.reserve_at_once(scopes, amount_usd, ttl_s)

    def reserve_at_once(
        self, scopes: Mapping[str, BudgetLimit], amount_usd: float, ttl_s: float
    ) -> Reservation | BudgetDenied:
        check_usd("a reservation's amount", amount_usd)
        check_ttl(ttl_s)
        return self.reserve_now(self.spend.windows(scopes), to_micros(amount_usd), ttl_s)

    def reserve_now(
        self, windows: tuple[ScopeWindow, ...], micros: int, ttl_s: float
    ) -> Reservation | BudgetDenied:
        """:meth:`reserve` of checked arguments, without a coroutine."""
        rid = f"local:{next(self._reservation_ids)}"
        return self.spend.reserve(windows, micros, ttl_s, rid, self.share)

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        self.settle_soon(reservation, actual_usd)

    def settle_soon(self, reservation: Reservation, actual_usd: float) -> None:
        check_usd("a settled amount", actual_usd)
        self.finish_now(reservation, to_micros(actual_usd))

    async def release_reservation(self, reservation: Reservation) -> None:
        self.finish_now(reservation, 0)

    def finish_now(self, reservation: Reservation, micros: int) -> bool:
        """Settle ``reservation`` at ``micros`` (0: release it) unless it was already;
        whether it was not."""
        if reservation.is_done:
            return False
        reservation.is_done = True
        self.spend.finish(reservation, micros)
        return True

    def spent(self, scope: str, limit: BudgetLimit) -> float:
        return to_usd(self.spend.spent(scope, limit))

    async def remaining(self, scope: str, limit: BudgetLimit) -> float:
        (window,) = self.spend.windows({scope: limit})
        return to_usd(max(0, self.spend.left(window)))

    # Affinity pins -----------------------------------------------------------------

    async def get_pin(self, key: str, ttl_s: float) -> str | None:
        return self.get_pin_now(key, ttl_s)

    def get_pin_now(self, key: str, ttl_s: float) -> str | None:
        """:meth:`get_pin`, without a coroutine."""
        pins = self._pin_store()
        value = pins.get(key)
        if value is None:
            return None
        pins.put(key, value, ttl_s)  # used: idle from now
        return value.decode()

    async def put_pin(self, key: str, entry: str, ttl_s: float) -> None:
        self.put_pin_now(key, entry, ttl_s)

    def put_pin_now(self, key: str, entry: str, ttl_s: float) -> None:
        """:meth:`put_pin`, without a coroutine."""
        self._pin_store().put(key, entry.encode(), ttl_s)

    def follow_pin_now(self, key: str, entry: str, ttl_s: float) -> None:
        """Another process made or moved ``key``'s pin: follow it, if this process holds
        a copy (pins it never used are not kept)."""
        pins = self._pin_store()
        held = pins.get(key)
        if held is not None and held != entry.encode():  # its own move: nothing to follow
            pins.put(key, entry.encode(), ttl_s)

    def forget_pins(self) -> None:
        """Drop every pin this process holds (moves made elsewhere may have been missed)."""
        self._pins: RecordStore | None = None

    def _pin_store(self) -> RecordStore:
        # Made on first use: a router without affinity never holds one.
        pins: RecordStore | None = getattr(self, "_pins", None)
        if pins is None:
            pins = self._pins = RecordStore(self._clock, max_records=MAX_PINS)
        return pins

    # Lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        return None

    def ensure_started(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def listen(self, topic: str, listener: Callable[[], None]) -> bool:
        self._listeners.setdefault(topic, []).append(listener)
        return False

    async def announce(self, topic: str) -> None:
        self.tell(topic)

    def tell(self, topic: str) -> None:
        """Call ``topic``'s listeners now."""
        for listener in self._listeners.get(topic, ()):
            listener()

    def tell_all(self) -> None:
        """Call every listener now (announcements may have been missed)."""
        for topic in self._listeners:
            self.tell(topic)

    def describe_backend(self) -> str:
        return "memory (this process only)"
