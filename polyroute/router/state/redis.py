"""Routing state shared through Redis: circuits, limits, retry budget, load.

Design (docs/shared-state.md says why):

- Reads never wait on Redis. Circuits and upstream blocks are mirrored in this
  process: every script that changes one publishes the new state on one channel,
  and each process applies what it hears (and what its own scripts return at once).
  A full read on connecting, and every few seconds, covers a missed message.
- Decisions that must hold cluster-wide are one server-side script each, awaited for
  at most ``timeout_ms`` (plus however late this process's own event loop runs):
  claiming the half-open probe (only when the mirror says half-open), a place under
  an entry's ``limits`` (only for entries that have some), an attempt out of the
  retry budget (only for retries and fallbacks), counting a failure. A success on a
  clean circuit costs nothing; other writes are queued without waiting. Calls go out
  in order, one pipeline at a time: a busy process pays one round trip for many.
- Load figures (in flight, latency) and request counts for the budget are exchanged
  every ``sync_ms`` in one script call per process, not per request.
- When Redis fails (a connection error, or a late answer and then a patient PING
  that fails too), the process decides alone from the same mirror (limits split by
  the processes last seen), logs ``state.degraded`` once, reconnects with backoff,
  pushes what it learned alone and logs ``state.restored``.
- Spend budgets are held and settled by one script each (all of a request's scopes
  at once), in integer micro-dollars, with Redis's clock for reservations' deadlines
  and this process's UTC date for the period (part of the keys). Most requests are
  admitted from a grant (polyroute.router.state.grants): one reservation for many,
  settled once for all of them. A settle Redis failed (or Redis down) is kept and
  replayed, idempotently by its id, at the next sync or on reconnecting; while Redis
  is down, budgets are decided from this process's ledger, each process taking its
  share of what it last saw left.
- Announcements (the gateway's "keys changed") are ``s<TAB>topic`` messages on the
  same channel: each process runs its listeners when one arrives, and all of them after
  it reconnects (a message sent while it was away is lost).
- Affinity pins are strings with an idle TTL, mirrored as circuits are: a pin made or
  moved is written by an awaited script that publishes it (``p<TAB>key<TAB>entry``),
  each process answers from its copy of a pin it made or read and renews the shared
  TTL with a queued write; only a pin it holds no copy of is read from Redis. Copies
  are dropped after a reconnect.
- Records (stored responses) are plain strings with a TTL, written and read by one
  command each on a pooled connection of their own, not in the scripts' pipeline: a
  value of hundreds of KB must not hold up the small decisions queued behind it. A
  record Redis cannot take is kept in this process (``state.record_local``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from polyroute.core.errors import ConfigError
from polyroute.core.logging import get_logger
from polyroute.core.periods import utc_now
from polyroute.core.redaction import redact, register_secret
from polyroute.router.config import Limits, RetryBudget, StateConfig
from polyroute.router.health import CircuitState, InMemoryHealth
from polyroute.router.state import scripts
from polyroute.router.state.budgets import (
    BudgetDenied,
    BudgetLimit,
    Reservation,
    ScopeWindow,
    check_ttl,
    check_usd,
    to_micros,
    to_usd,
)
from polyroute.router.state.contract import Denied, Lease, Load, TokenEstimate
from polyroute.router.state.grants import GRANT_MAX_AGE_S, Grant, GrantBook
from polyroute.router.state.memory import MemoryState
from polyroute.router.stats import StatsBook

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import NoScriptError, RedisError, ResponseError
except ImportError:  # pragma: no cover - depends on the install
    aioredis = None  # type: ignore[assignment]

_log = get_logger()

LEASE_MS = 30_000
"""How long a place under ``concurrent`` outlives a process that died holding it."""
RENEW_EVERY_S = 5.0
"""Held places are renewed, and the mirror re-read in full, this often."""
CONNECT_TIMEOUT_S = 1.0
POOL_SIZE = 64
CHECK_TIMEOUT_S = 1.0
"""A late answer is checked with a PING this patient before Redis is called slow: the
lateness may be this process's own busy event loop, not Redis."""
RECONNECT_MAX_S = 2.0
RECORD_MARGIN_S = 0.25
"""Added to ``timeout_ms`` for a record's command: its value may take a few ms on the
wire, and a gateway about to hand out a response's id can wait that long (a request's
decisions cannot)."""
SETTLED_IDS_MIN_MS = 60_000
"""Redis remembers a settled id for the reservation's ``ttl_s``, and at least this long:
a replay of a settle whose answer was lost counts nothing within that time."""
MAX_UNSENT = 10_000
"""Settles kept for Redis at most, one per request; past it (a long outage), they are
folded into one settle of their sums per scope."""
_FAILED = object()
"""What a call returns when Redis did not answer in time, or failed (decide locally)."""
_REDIS_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError)
if aioredis is not None:
    _REDIS_ERRORS = (RedisError, OSError, TimeoutError)


@dataclass(slots=True)
class _Settle:
    """Spend to count in Redis, once (by ``id``), and the hold to give back with it."""

    id: str
    hold: str
    """The reservation's member in its scopes' holds; empty when Redis holds nothing."""
    remember_ms: int
    amounts: dict[ScopeWindow, int]
    """Window -> micro-dollars to count there."""


class RedisState:
    """:class:`RoutingState` shared by every process using the same Redis and prefix.
    ``utc_now`` tells budgets which period it is (injectable for tests)."""

    def __init__(
        self,
        config: StateConfig,
        stats: StatsBook,
        *,
        names: list[str],
        failures: int,
        cooldown_seconds: float,
        limits: Mapping[str, Limits],
        budget: RetryBudget | None,
        utc_now: Callable[[], datetime] = utc_now,
    ) -> None:
        if aioredis is None:
            raise ConfigError(
                "state.backend redis needs the redis package: pip install 'polyroute[redis]'"
            )
        register_secret(urlsplit(config.url).password)
        self.stats = stats
        self.mirror = InMemoryHealth(failures=failures, seconds=cooldown_seconds)
        self.local = MemoryState(self.mirror, stats, limits=limits, budget=budget, utc_now=utc_now)
        self.url = redact(config.url)
        """The URL as logs and tables show it: credentials masked."""
        self._config = config
        self._timeout = config.timeout_ms / 1000
        self._names = names
        self._limits = dict(limits)
        self._budget = budget
        self._cooldown_ms = round(cooldown_seconds * 1000)
        self._probe_ms = max(60_000, self._cooldown_ms)
        self._process = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lease_ids = itertools.count()
        self._held: dict[str, str] = {}
        """Lease id -> entry, for the places this process holds under ``concurrent``."""
        self._versions: dict[str, int] = {}
        """Entry -> version of the last circuit report applied (see scripts.py)."""
        self._others: dict[str, list[float]] = {}
        """Entry -> [in flight, latency x attempts, expected x attempts, attempts] of
        every other process, from the last sync."""
        self._requests = 0
        """Requests since the last sync (for the retry budget)."""
        tag = "{" + config.prefix + "}"
        self.channel = f"{tag}:events"
        self._key = {
            kind: f"{tag}:{kind}" for kind in ("processes", "reports", "budget", "settled")
        }
        self._grants = GrantBook(config.budget_grant_requests)
        self._taking: dict[tuple[ScopeWindow, ...], asyncio.Future[None]] = {}
        """Windows -> a grant being taken (the requests that need one meanwhile wait)."""
        self._unsent: dict[str, _Settle] = {}
        """Settle id -> a settle Redis has not confirmed, replayed until it has."""
        self._replaying = False
        self._entry_keys = {
            name: {kind: f"{tag}:{kind}:{name}" for kind in _ENTRY_KINDS} for name in names
        }
        # A blocking pool: past POOL_SIZE calls in flight, a call waits for a free
        # connection (within its timeout) instead of failing as if Redis were down.
        pool = aioredis.BlockingConnectionPool.from_url(
            config.url,
            max_connections=POOL_SIZE,
            timeout=None,
            # Requests wait at most timeout_ms (their own bound, loop lag added); the
            # socket's only keeps a silent connection from holding the queue forever.
            socket_timeout=CHECK_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        self._client = aioredis.Redis(connection_pool=pool)
        self._scripts = {
            name: self._client.register_script(source)
            for name, source in vars(scripts).items()
            if name.isupper() and not name.startswith("_")
        }
        self._started = False
        self._closing = False
        self._checking: asyncio.Task[None] | None = None
        self._loop_lag = 0.0
        """Seconds this process's event loop has lately been running behind (measured at
        each sync): added to the timeout, which is Redis's time, not the loop's."""
        self.decisions = {"shared": 0, "local": 0}
        """Decisions that needed Redis: taken there, or alone (late answer, Redis down)."""
        self._down_since: float | None = None
        self._records_logged_down: float | None = None
        """``_down_since`` of the outage whose records ``state.record_local`` announced."""
        self._pubsub: Any = None
        self._queue: list[tuple[str, list[str], tuple[Any, ...], asyncio.Future[Any]]] = []
        """Script calls waiting for the batch in flight (see ``_submit``)."""
        self._sender: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._syncing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<RedisState {self.url} prefix={self._config.prefix!r}>"

    @property
    def degraded(self) -> bool:
        """Redis is unreachable: this process decides alone."""
        return self._down_since is not None

    # Lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._syncing = asyncio.create_task(self._sync_forever())
        if not await self._connect():
            self._down_since = time.monotonic()
            _log.warning("state.degraded", backend="redis", url=self.url, reason="unreachable")
            self._reconnecting = asyncio.create_task(self._reconnect())

    def ensure_started(self) -> None:
        if not self._started:
            self._starting = asyncio.get_running_loop().create_task(self.start())

    async def aclose(self) -> None:
        for grant in self._grants.retire_all():  # their room, given back
            self._retired(grant)
        # Writes still queued go first (bounded): a success recorded just before
        # closing still reaches the others.
        if self._sender is not None:
            await asyncio.wait([self._sender], timeout=CONNECT_TIMEOUT_S)
        if self._unsent and self._started and not self.degraded:
            # Spend counted alone would be lost with this process: one last try.
            with contextlib.suppress(*_REDIS_ERRORS):
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await self._replay_unsent()
        # The loops also stop on this flag: on Python 3.11, a cancellation that lands as
        # an asyncio.timeout inside them expires can be swallowed (fixed in 3.12).
        self._closing = True
        running = [
            task
            for task in (
                self._starting,
                self._listener,
                self._reconnecting,
                self._syncing,
                self._checking,
                self._sender,
            )
            if task is not None and not task.done()
        ]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=CONNECT_TIMEOUT_S)
        await self._close_pubsub()
        await self._client.aclose(close_connection_pool=True)

    def reconfigure(
        self,
        *,
        names: list[str],
        failures: int,
        cooldown_seconds: float,
        limits: Mapping[str, Limits],
        budget: RetryBudget | None,
    ) -> None:
        self.local.reconfigure(
            names=names,
            failures=failures,
            cooldown_seconds=cooldown_seconds,
            limits=limits,
            budget=budget,
        )
        tag = "{" + self._config.prefix + "}"
        for name in names:
            if name not in self._entry_keys:
                self._entry_keys[name] = {kind: f"{tag}:{kind}:{name}" for kind in _ENTRY_KINDS}
        # A removed entry keeps its keys here (requests still on it report to them) but
        # is no longer synced or read; Redis keeps its circuit for gateways that still
        # route to it (each reloads its own file).
        self._names = list(names)
        self._limits = dict(limits)
        self._budget = budget
        self._cooldown_ms = round(cooldown_seconds * 1000)
        self._probe_ms = max(60_000, self._cooldown_ms)

    def listen(self, topic: str, listener: Callable[[], None]) -> bool:
        self.local.listen(topic, listener)
        return True

    async def announce(self, topic: str) -> None:
        message = f"s\t{topic}"
        result, _ = await self._on_redis(lambda: self._client.publish(self.channel, message))
        if result is _FAILED:
            self.local.tell(topic)  # this process hears it at least (others: at reconnect)

    def describe_backend(self) -> str:
        if self._down_since is None:
            return f"redis {self.url} (shared)"
        down = time.monotonic() - self._down_since
        return f"redis {self.url} (unreachable for {down:.0f} s: deciding alone)"

    # Circuits ----------------------------------------------------------------------

    def state(self, name: str) -> CircuitState:
        return self.mirror.state(name)

    def seconds_left(self, name: str) -> float:
        return self.mirror.seconds_left(name)

    async def admit(self, name: str) -> bool:
        if self.mirror.state(name) != "half-open" or self.degraded:
            return self.mirror.admit_now(name)
        result = await self._call(
            "ADMIT", [self._entry_keys[name]["circuit"]], name, self._probe_ms
        )
        if result is _FAILED:
            return self.mirror.admit_now(name)
        admitted, report = result
        self._apply(report)
        return bool(admitted)

    def record_success(self, name: str) -> None:
        if self.mirror.is_clean(name):
            return
        self.mirror.record_success(name)
        self._write("SUCCESS", [self._entry_keys[name]["circuit"]], name, self.channel)

    async def record_failure(self, name: str) -> bool:
        if not self.degraded:
            result = await self._call(
                "FAILURE",
                [self._entry_keys[name]["circuit"]],
                name,
                self.mirror.threshold,
                self._cooldown_ms,
                self._cooldown_ms + 3_600_000,
            )
            if result is not _FAILED:
                opened, report = result
                self._apply(report)
                return bool(opened)
        return self.mirror.record_failure_now(name)

    def release(self, name: str) -> None:
        self.mirror.release(name)
        self._write("RELEASE", [self._entry_keys[name]["circuit"]], name, self.channel)

    # Limits ------------------------------------------------------------------------

    async def acquire(self, name: str, estimate: TokenEstimate) -> Lease | Denied:
        limits = self._limits.get(name)
        if limits is None or self.degraded:
            return self.local.acquire_now(name, estimate)
        blocked = self.local.blocked(name)
        if blocked is not None:
            return blocked
        tokens = estimate() if limits.tpm is not None else 0
        lease_id = f"{self._process}:{next(self._lease_ids)}"
        keys = self._entry_keys[name]
        result = await self._call_keys(
            "ACQUIRE",
            [keys["rpm"], keys["tpm"], keys["leases"], keys["block"]],
            limits.rpm or 0,
            limits.tpm or 0,
            limits.concurrent or 0,
            tokens,
            lease_id,
            LEASE_MS,
        )
        if result is _FAILED:
            # The script may have run and taken a place nobody will give back.
            self._write("FINISH", [keys["tpm"], keys["leases"]], lease_id, 0, 0)
            return self.local.acquire_now(name, estimate)
        admitted, reason, value = result
        if not admitted:
            return Denied(reason.decode(), int(value) / 1000)
        window = int(value)
        if limits.concurrent is not None:
            self._held[lease_id] = name
        self.local.count_in_flight(name, 1)

        def end(lease: Lease, used: int | None) -> None:
            self.local.count_in_flight(name, -1)
            self._held.pop(lease_id, None)
            correction = 0 if used is None else used - lease.tokens
            self._write("FINISH", [keys["tpm"], keys["leases"]], lease_id, window, correction)

        return Lease(name, tokens, end)

    def block(self, name: str, seconds: float, reason: str) -> None:
        self.local.block(name, seconds, reason)
        ms = max(1, round(seconds * 1000))
        self._write("BLOCK", [self._entry_keys[name]["block"]], name, self.channel, ms, reason)

    async def admit_key(self, key: str, rpm: int) -> float | None:
        if not self.degraded:
            tag = "{" + self._config.prefix + "}"
            starts, never = f"{tag}:key-rpm:{key}", f"{tag}:key-none:{key}"
            result = await self._call_keys(
                "ACQUIRE", [starts, never, never, never], rpm, 0, 0, 0, secrets.token_hex(8), 0
            )
            if result is not _FAILED:
                admitted, _reason, value = result
                return None if admitted else int(value) / 1000
        return self.local.admit_key_now(key, rpm)

    async def admit_key_tokens(self, key: str, tpm: int, tokens: int) -> Lease | Denied:
        if self.degraded:
            return self.local.admit_key_tokens_now(key, tpm, tokens)
        tag = "{" + self._config.prefix + "}"
        counted, never = f"{tag}:key-tpm:{key}", f"{tag}:key-none:{key}"
        lease_id = f"{self._process}:{next(self._lease_ids)}"
        result = await self._call_keys(
            "ACQUIRE", [never, counted, never, never], 0, tpm, 0, tokens, lease_id, 0
        )
        if result is _FAILED:
            return self.local.admit_key_tokens_now(key, tpm, tokens)
        admitted, reason, value = result
        if not admitted:
            return Denied(reason.decode(), int(value) / 1000)
        window = int(value)

        def end(lease: Lease, used: int | None) -> None:
            correction = 0 if used is None else used - lease.tokens
            if correction:
                self._write("FINISH", [counted, never], lease_id, window, correction)

        return Lease(key, tokens, end)

    # Retry budget ------------------------------------------------------------------

    def count_request(self) -> None:
        if self._budget is not None:
            self._requests += 1
            self.local.count_request()

    async def spend_attempt(self) -> bool:
        budget = self._budget
        if budget is None:
            return True
        if not self.degraded:
            result = await self._call_keys(
                "SPEND",
                [self._key["budget"]],
                budget.window_seconds,
                budget.ratio,
                budget.min_per_second,
            )
            if result is not _FAILED:
                return bool(result)
        return self.local.spend_attempt_now()

    # Spend budgets -----------------------------------------------------------------

    async def reserve(
        self, scopes: Mapping[str, BudgetLimit], amount_usd: float, ttl_s: float
    ) -> Reservation | BudgetDenied:
        held = self.reserve_at_once(scopes, amount_usd, ttl_s)
        if held is not None:
            return held
        windows = self.local.spend.windows(scopes)
        micros = to_micros(amount_usd)
        rid = f"{self._process}:{next(self._lease_ids)}"
        grant, failed = await self._admit_from_new_grant(windows, micros, ttl_s, rid)
        if grant is not None:
            return _granted(grant, rid, windows, micros, ttl_s)
        if failed:
            return self.local.reserve_now(windows, micros, ttl_s)
        return await self._reserve_alone(windows, micros, ttl_s, rid)

    def reserve_at_once(
        self, scopes: Mapping[str, BudgetLimit], amount_usd: float, ttl_s: float
    ) -> Reservation | BudgetDenied | None:
        check_usd("a reservation's amount", amount_usd)
        check_ttl(ttl_s)
        windows = self.local.spend.windows(scopes)
        micros = to_micros(amount_usd)
        if not windows or self.degraded:
            return self.local.reserve_now(windows, micros, ttl_s)
        rid = f"{self._process}:{next(self._lease_ids)}"
        grant = self._grants.admit(windows, micros, rid)
        return None if grant is None else _granted(grant, rid, windows, micros, ttl_s)

    async def _reserve_alone(
        self, windows: tuple[ScopeWindow, ...], micros: int, ttl_s: float, rid: str
    ) -> Reservation | BudgetDenied:
        """One request's reservation in Redis (no grant had room for it)."""
        result = await self._hold(windows, rid, micros, ttl_s)
        if result is None:
            return self.local.reserve_now(windows, micros, ttl_s)
        if isinstance(result, BudgetDenied):
            return result
        remaining = {scope: to_usd(max(0, left)) for scope, left in result.items()}
        return Reservation(rid, windows, to_usd(micros), remaining, ttl_s, is_shared=True)

    async def _admit_from_new_grant(
        self, windows: tuple[ScopeWindow, ...], micros: int, ttl_s: float, rid: str
    ) -> tuple[Grant | None, bool]:
        """Retire the grant on ``windows`` and take a new one (or wait for the one
        another request is taking), and admit the request from it: the grant (``None``:
        too little left for one, or grants off), and whether Redis failed to answer."""
        book = self._grants
        if (retired := book.retire(windows)) is not None:
            self._retired(retired)
        taking = self._taking.get(windows)
        if taking is not None:
            await asyncio.shield(taking)
            return book.admit(windows, micros, rid), False
        want = book.wanted(windows, micros, self.local.share)
        if not want:
            return None, False
        taken = self._taking[windows] = asyncio.get_running_loop().create_future()
        try:
            gid = f"{self._process}:g{next(self._lease_ids)}"
            # Its last request may be admitted at its age limit and then run ttl_s.
            grant_ttl_s = ttl_s + GRANT_MAX_AGE_S
            result = await self._hold(windows, gid, want, grant_ttl_s)
        finally:
            del self._taking[windows]
            taken.set_result(None)
        if result is None or isinstance(result, BudgetDenied):
            return None, result is None
        grant = Grant(gid, windows, want, result, grant_ttl_s, self._grants.clock())
        book.install(grant)
        return book.admit(windows, micros, rid), False

    async def _hold(
        self, windows: tuple[ScopeWindow, ...], rid: str, micros: int, ttl_s: float
    ) -> dict[str, int] | BudgetDenied | None:
        """Hold ``micros`` on ``windows`` in Redis under ``rid``: scope -> micro-dollars
        left there with it held, a denial, or ``None``: Redis did not answer (given
        back, if it held it after all). Notes the least left, which sizes the next
        grant."""
        limits = [(to_micros(window.limit.usd), window.expire_at_ms) for window in windows]
        result = await self._call_keys(
            "RESERVE",
            self._spend_keys(windows),
            rid,
            micros,
            math.ceil(ttl_s * 1000),
            *itertools.chain.from_iterable(limits),
        )
        if result is _FAILED:
            # The script may have run and held the amount: given back (else it expires).
            hold = _Settle(
                rid, f"{rid}={micros}", self._remember_ms(ttl_s), dict.fromkeys(windows, 0)
            )
            self._write("SETTLE", self._settle_keys(hold), *self._settle_args(hold))
            return None
        spend = self.local.spend
        if not result[0]:
            index, settled, held = (int(figure) for figure in result[1:])
            window = windows[index - 1]
            spend.observe(window, settled)
            left = spend.left(window, held)
            self._grants.room[windows] = left
            return BudgetDenied(window.scope, to_usd(max(0, left)))
        remaining = {}
        for window, settled, held in zip(windows, result[1::2], result[2::2], strict=True):
            spend.observe(window, int(settled))
            remaining[window.scope] = spend.left(window, int(held))
        self._grants.room[windows] = min(remaining.values()) + micros
        return remaining

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        check_usd("a settled amount", actual_usd)
        await self._finished(self._finish(reservation, to_micros(actual_usd)))

    def settle_soon(self, reservation: Reservation, actual_usd: float) -> None:
        check_usd("a settled amount", actual_usd)
        self._finish(reservation, to_micros(actual_usd))

    async def release_reservation(self, reservation: Reservation) -> None:
        await self._finished(self._finish(reservation, 0))

    def spent(self, scope: str, limit: BudgetLimit) -> float:
        return self.local.spent(scope, limit)

    async def remaining(self, scope: str, limit: BudgetLimit) -> float:
        spend = self.local.spend
        windows = spend.windows({scope: limit})
        result = await self._ask_if_up("SPENT", self._spend_keys(windows), ())
        if result is _FAILED:
            return await self.local.remaining(scope, limit)
        settled, held = int(result[0]), int(result[1])
        spend.observe(windows[0], settled)
        return to_usd(max(0, spend.left(windows[0], held)))

    def _finish(self, reservation: Reservation, micros: int) -> asyncio.Future[Any] | None:
        """Settle at ``micros`` (0: release) here at once, and in Redis with the next
        batch of calls (a request admitted from a grant: with its grant's settle, once
        the grant's last request ends). The future of the call, if one was sent."""
        if not self.local.finish_now(reservation, micros):
            return None
        from_grant, ended = self._grants.end(reservation.id, micros)
        if from_grant:
            return None if ended is None else self._settle_grant(ended)
        if reservation.is_shared:
            settle_id, hold = reservation.id, f"{reservation.id}={reservation.micros}"
        elif micros and reservation.windows:
            # Decided alone: Redis holds nothing, but the spend counts there too. Local
            # ids are only this process's: the id Redis remembers names the process.
            settle_id, hold = f"{self._process}:{reservation.id}", ""
        else:
            return None
        amounts = dict.fromkeys(reservation.windows, micros)
        return self._send_settle(
            _Settle(settle_id, hold, self._remember_ms(reservation.ttl_s), amounts)
        )

    def _retired(self, grant: Grant) -> None:
        """Settle a grant no longer admitting, or, while requests from it run, give
        back what it did not admit (its settle comes with its last request's end)."""
        if grant.drawn == 0:
            self._settle_grant(grant)
        elif grant.free and not self.degraded and self._started:
            given_back = grant.free
            old = self._grants.shrink(grant)
            shrunk = self._submit(
                "SHRINK", self._spend_keys(grant.windows), (old, grant.member, given_back)
            )
            shrunk.add_done_callback(lambda answer: self._shrunk(grant, answer))

    @staticmethod
    def _shrunk(grant: Grant, answer: asyncio.Future[Any]) -> None:
        if not answer.cancelled() and answer.result() is not _FAILED:
            grant.shrunk_from = None

    def _settle_grant(self, grant: Grant) -> asyncio.Future[Any] | None:
        """Give a grant's hold back and count what its requests cost."""
        remember_ms = self._remember_ms(grant.ttl_s)
        if grant.shrunk_from is not None:  # a shrink not confirmed: its old hold too
            zero = dict.fromkeys(grant.windows, 0)
            self._send_settle(_Settle(f"{grant.id}:unshrunk", grant.shrunk_from, remember_ms, zero))
        amounts = dict.fromkeys(grant.windows, grant.spent)
        return self._send_settle(_Settle(grant.id, grant.member, remember_ms, amounts))

    def _send_settle(self, settle: _Settle) -> asyncio.Future[Any] | None:
        """Queue ``settle`` with the next batch (its answer taken by a callback), or
        keep it for Redis while it is down."""
        if self.degraded or not self._started:
            self._keep_unsent(settle)
            return None
        sent = self._submit("SETTLE", self._settle_keys(settle), self._settle_args(settle))
        sent.add_done_callback(lambda answer: self._settled(settle, answer))
        return sent

    def _settled(self, settle: _Settle, answer: asyncio.Future[Any]) -> None:
        result: Any = _FAILED if answer.cancelled() else answer.result()
        if result is _FAILED:
            self._keep_unsent(settle)
        else:
            self._confirm(settle, result)

    async def _finished(self, sent: asyncio.Future[Any] | None) -> None:
        """Wait for a settle's answer (taken by its callback) as long as a decision
        would; a late one is still taken when it comes."""
        if sent is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout + self._loop_lag):
                    await asyncio.shield(sent)

    def _keep_unsent(self, settle: _Settle) -> None:
        self._unsent[settle.id] = settle
        if len(self._unsent) <= MAX_UNSENT or self._replaying:
            return
        # A long outage: one settle of the sums. The holds of the settles folded in are
        # not given back (they expire), and a folded one Redis had taken after all
        # (answer lost) counts twice: over, never under.
        amounts: dict[ScopeWindow, int] = {}
        for unsent in self._unsent.values():
            for window, micros in unsent.amounts.items():
                amounts[window] = amounts.get(window, 0) + micros
        folded_id = f"{self._process}:folded:{next(self._lease_ids)}"
        self._unsent = {folded_id: _Settle(folded_id, "", SETTLED_IDS_MIN_MS, amounts)}

    async def _replay_unsent(self) -> None:
        """Send every settle Redis has not confirmed, in one round trip (raises what
        Redis raises). Each counts once, even if an earlier try reached Redis."""
        unsent = list(self._unsent.values())
        if not unsent or self._replaying:
            return  # nothing to send, or a replay on its way sends these already
        self._replaying = True
        try:
            calls = [("SETTLE", self._settle_keys(s), self._settle_args(s)) for s in unsent]
            results = await self._pipeline(calls)
        finally:
            self._replaying = False
        for settle, result in zip(unsent, results, strict=True):
            if result is not _FAILED and self._unsent.pop(settle.id, None) is settle:
                self._confirm(settle, result)

    def _confirm(self, settle: _Settle, result: list[int]) -> None:
        """Redis counted ``settle`` (now or before) and says what is settled now."""
        for (window, micros), settled in zip(settle.amounts.items(), result[1:], strict=True):
            self.local.spend.confirm(window, micros, int(settled))

    def _spend_keys(self, windows: tuple[ScopeWindow, ...] | list[ScopeWindow]) -> list[str]:
        tag = "{" + self._config.prefix + "}"
        spend = [f"{tag}:spend:{window.name}" for window in windows]
        return spend + [f"{tag}:holds:{window.name}" for window in windows]

    def _settle_keys(self, settle: _Settle) -> list[str]:
        return [*self._spend_keys(list(settle.amounts)), self._key["settled"]]

    @staticmethod
    def _settle_args(settle: _Settle) -> tuple[Any, ...]:
        amounts = [(micros, window.expire_at_ms) for window, micros in settle.amounts.items()]
        return (settle.id, settle.hold, settle.remember_ms, *itertools.chain.from_iterable(amounts))

    @staticmethod
    def _remember_ms(ttl_s: float) -> int:
        return max(SETTLED_IDS_MIN_MS, math.ceil(ttl_s * 1000))

    # Load --------------------------------------------------------------------------

    def load(self, name: str) -> Load:
        own = self.local.load(name)
        others = self._others.get(name)
        if not others:
            return own
        in_flight, latency_sum, expected_sum, attempts = others
        mine = self.stats[name].attempts
        total = mine + attempts
        if not total:
            return Load(own.in_flight + int(in_flight))
        return Load(
            own.in_flight + int(in_flight),
            (own.latency_ms * mine + latency_sum) / total,
            (own.expected_ms * mine + expected_sum) / total,
        )

    # Stored records ----------------------------------------------------------------

    async def put_record(self, key: str, value: bytes, ttl_s: float) -> None:
        records = self.local.records
        records.check(key, value, ttl_s)  # the same bound whether Redis is up or not
        ms = max(1, math.ceil(ttl_s * 1000))
        name = self._record_key(key)
        result, reason = await self._on_redis(lambda: self._client.set(name, value, px=ms))
        if result is not _FAILED:
            records.delete(key)  # a copy kept alone earlier is older than the shared one
            return
        records.put(key, value, ttl_s)
        self._log_alone("put", reason)

    async def get_record(self, key: str) -> bytes | None:
        name = self._record_key(key)
        result, reason = await self._on_redis(lambda: self._client.get(name))
        if result is _FAILED:
            self._log_alone("get", reason)
            return self.local.records.get(key)
        # Not in Redis: it may have been kept here while Redis could not take it.
        shared: bytes | None = result
        return shared if shared is not None else self.local.records.get(key)

    async def delete_record(self, key: str) -> bool:
        here = self.local.records.delete(key)
        name = self._record_key(key)
        result, reason = await self._on_redis(lambda: self._client.delete(name))
        if result is _FAILED:
            self._log_alone("delete", reason)
            return here
        return bool(result) or here

    def _record_key(self, key: str) -> str:
        return "{" + self._config.prefix + "}:record:" + key

    # Affinity pins -----------------------------------------------------------------

    # Pins are mirrored like circuits: a process answers from its copy of a pin it used
    # or read, without waiting (an awaited read measured 23 ms of a gateway's TTFT p50 on
    # a busy 2-core machine), renews the shared TTL with a queued write, and hears every
    # move on the channel. Only a pin it holds no copy of is read from Redis, awaited.
    # After a reconnect the copies are dropped: moves made meanwhile were not heard.

    async def get_pin(self, key: str, ttl_s: float) -> str | None:
        ms = max(1, math.ceil(ttl_s * 1000))
        self._follow_pins()
        if (held := self.local.get_pin_now(key, ttl_s)) is not None:
            self._write("PIN_TOUCH", [self._pin_key(key)], ms)
            return held
        # A decision like a limit's: counted in `decisions`, shared or taken locally.
        result = await self._call_keys("PIN_GET", [self._pin_key(key)], ms)
        if result is _FAILED or result is None:
            return None
        entry: str = result.decode()
        self.local.put_pin_now(key, entry, ttl_s)
        return entry

    async def put_pin(self, key: str, entry: str, ttl_s: float) -> None:
        self._follow_pins()
        self.local.put_pin_now(key, entry, ttl_s)  # this process's copy, and for outages
        ms = max(1, math.ceil(ttl_s * 1000))
        # Awaited, not queued: a queued write can reach Redis after the conversation's
        # next turn has read the pin on another process (measured: most of them did).
        await self._ask_if_up("PIN_PUT", [self._pin_key(key)], (entry, ms, self.channel, key))

    def _heard_pin(self, key: str, entry: str, ttl_ms: int) -> None:
        """A process made or moved a pin: follow it, if this process holds a copy."""
        self.local.follow_pin_now(key, entry, ttl_ms / 1000)

    def _follow_pins(self) -> None:
        # Once: after every (re)connect the state tells all listeners (see _connect).
        if not getattr(self, "_following_pins", False):
            self._following_pins = True
            self.local.listen(_PINS_STALE, self.local.forget_pins)

    def _pin_key(self, key: str) -> str:
        return "{" + self._config.prefix + "}:pin:" + key

    async def _on_redis(self, command: Callable[[], Awaitable[Any]]) -> tuple[Any, str]:
        """One record command, bounded by the timeout plus :data:`RECORD_MARGIN_S`: its
        answer and ``""``, or ``_FAILED`` and why (unreachable, late, or refused).
        ``command`` makes the coroutine only once Redis is to be asked."""
        if self.degraded or not self._started:
            return _FAILED, "unreachable" if self._started else "not started"
        try:
            async with asyncio.timeout(self._timeout + self._loop_lag + RECORD_MARGIN_S):
                return await command(), ""
        except TimeoutError:
            # As for a late decision: a patient PING tells a slow Redis from a busy loop.
            if self._checking is None or self._checking.done():
                self._checking = asyncio.get_running_loop().create_task(self._check())
            return _FAILED, "timeout"
        except ResponseError as error:
            # This one command refused (maxmemory reached, say): Redis itself is up.
            return _FAILED, redact(str(error)) or type(error).__name__
        except _REDIS_ERRORS as error:
            self._degrade(error)
            return _FAILED, type(error).__name__

    def _log_alone(self, op: str, reason: str) -> None:
        """Say a record was kept or read in this process alone: every time while Redis is
        up (a rare late or refused command), once per outage while it is down."""
        if self._down_since is not None:
            if self._records_logged_down == self._down_since:
                return
            self._records_logged_down = self._down_since
        _log.warning("state.record_local", backend="redis", url=self.url, op=op, reason=reason)

    # Talking to Redis ------------------------------------------------------------

    async def _call(self, script: str, keys: list[str], name: str, *args: Any) -> Any:
        """Run an entry's script (its name and the channel go first); ``_FAILED`` when
        Redis did not answer within the timeout."""
        return await self._call_keys(script, keys, name, self.channel, *args)

    async def _call_keys(self, script: str, keys: list[str], *args: Any) -> Any:
        """A decision's script: its answer, or ``_FAILED`` (counted in ``decisions``)."""
        if self.degraded or not self._started:
            return _FAILED
        result = await self._ask(script, keys, args)
        self.decisions["local" if result is _FAILED else "shared"] += 1
        return result

    async def _ask_if_up(self, script: str, keys: list[str], args: tuple[Any, ...]) -> Any:
        """:meth:`_ask`, or ``_FAILED`` at once while Redis is down (not a decision: not
        counted in ``decisions``)."""
        if self.degraded or not self._started:
            return _FAILED
        return await self._ask(script, keys, args)

    async def _ask(self, script: str, keys: list[str], args: tuple[Any, ...]) -> Any:
        try:
            async with asyncio.timeout(self._timeout + self._loop_lag):
                return await self._submit(script, keys, args)
        except TimeoutError:
            # Taken alone, this time. Whether Redis is slow, or this process's event
            # loop too busy to read the answer in time, a patient PING tells.
            if self._checking is None or self._checking.done():
                self._checking = asyncio.get_running_loop().create_task(self._check())
            return _FAILED

    async def _check(self) -> None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._client.ping()
        except _REDIS_ERRORS as error:
            self._degrade(error)

    def _write(self, script: str, keys: list[str], *args: Any) -> None:
        """A write nobody waits for; it goes to Redis after every call submitted before
        it (so a place given back is free for this process's next request), and its
        failure degrades the state like any other."""
        if not self.degraded and self._started:
            self._submit(script, keys, args)

    def _submit(self, script: str, keys: list[str], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Queue one script call. One batch at a time is in flight, as one pipeline:
        calls go in the order they were made, and a busy process pays one round trip
        (and a fraction of the client's per-command cost) for many calls."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((script, keys, args, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send())
        return future

    async def _send(self) -> None:
        while self._queue and not self.degraded:
            batch, self._queue = self._queue, []
            try:
                results = await self._pipeline([(s, k, a) for s, k, a, _ in batch])
            except _REDIS_ERRORS as error:
                results = [_FAILED] * len(batch)
                self._degrade(error)
            for (_, _, _, future), result in zip(batch, results, strict=True):
                if not future.done():  # a caller that timed out has cancelled it
                    future.set_result(result)
        for *_, future in self._queue:  # degraded: nobody will send these
            if not future.done():
                future.set_result(_FAILED)
        self._queue.clear()

    async def _pipeline(self, calls: list[tuple[str, list[str], tuple[Any, ...]]]) -> list[Any]:
        """Run ``calls`` in one round trip. Scripts are loaded on connecting; one Redis
        forgot since (SCRIPT FLUSH) is loaded again and its calls rerun, after the rest
        of the batch. A call's own error becomes ``_FAILED``."""
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(self._scripts[script].sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            for script in {calls[i][0] for i in missing}:
                await self._client.script_load(self._scripts[script].script)
            retried = await self._pipeline([calls[i] for i in missing])
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        return [_FAILED if isinstance(r, Exception) else r for r in results]

    def _apply(self, report: bytes | str) -> None:
        """Take one report (a script's answer or a message) into the mirror."""
        text = report.decode() if isinstance(report, bytes) else report
        kind, name, *fields = text.split("\t")
        if kind == "c":
            version = int(fields[3])
            if version <= self._versions.get(name, 0):
                return  # older than what this process already applied
            self._versions[name] = version
            failures, left_ms, probing = int(fields[0]), int(fields[1]), fields[2] == "1"
            seconds = None if left_ms == -1 else left_ms / 1000
            self.mirror.set_circuit(name, failures=failures, seconds_left=seconds, probing=probing)
        elif kind == "b":
            self.local.block(name, int(fields[0]) / 1000, fields[1])
        elif kind == "s":
            self.local.tell(name)
        elif kind == "p":
            self._heard_pin(name, fields[0], int(fields[1]))

    def _degrade(self, error: BaseException) -> None:
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        _log.warning(
            "state.degraded",
            backend="redis",
            url=self.url,
            error_type=type(error).__name__,
            error=redact(str(error)) or type(error).__name__,
        )
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.05
        while not await self._connect():
            if self._closing:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
        down_since, self._down_since = self._down_since, None
        _log.info(
            "state.restored",
            backend="redis",
            url=self.url,
            down_s=round(time.monotonic() - (down_since or time.monotonic()), 3),
        )

    async def _connect(self) -> bool:
        """Subscribe, push what was learned alone, read everything shared; True when done."""
        await self._close_pubsub()
        learned = self.mirror.open_circuits()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                # Pooled connections to a server that went away are dead: drop them all.
                await self._client.connection_pool.disconnect()
                pubsub = self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                # Every script loaded up front: a batch never meets an unknown one
                # (which would run out of order once loaded).
                loading = self._client.pipeline(transaction=False)
                for script in self._scripts.values():
                    loading.script_load(script.script)
                await loading.execute()
                for name, (failures, left) in learned.items():
                    if name in self._entry_keys:
                        await self._scripts["MERGE"](
                            keys=[self._entry_keys[name]["circuit"]],
                            args=[
                                name,
                                self.channel,
                                failures,
                                round(left * 1000),
                                self._cooldown_ms + 3_600_000,
                            ],
                        )
                await self._replay_unsent()  # spend counted alone, before others decide
                reports = await self._read_all()
        except _REDIS_ERRORS:
            await self._close_pubsub()
            return False
        for report in reports:
            self._apply(report)
        self._listener = asyncio.get_running_loop().create_task(self._listen(pubsub))
        self.local.tell_all()  # announcements made while this process was away are lost
        return True

    async def _read_all(self) -> list[bytes]:
        circuits = [self._entry_keys[name]["circuit"] for name in self._names]
        blocks = [self._entry_keys[name]["block"] for name in self._names]
        reports: list[bytes] = await self._scripts["READ"](keys=circuits + blocks, args=self._names)
        return reports

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None  # its listener stops on this too
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener], timeout=CONNECT_TIMEOUT_S + 1)
            self._listener = None
        if pubsub is not None:
            with contextlib.suppress(*_REDIS_ERRORS):  # already gone: nothing left to close
                await pubsub.aclose()

    async def _listen(self, pubsub: Any) -> None:
        try:
            while not self._closing and self._pubsub is pubsub:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    self._apply(message["data"])
        except _REDIS_ERRORS as error:
            self._degrade(error)

    async def _sync_forever(self) -> None:
        every = self._config.sync_ms / 1000
        last_renewal = time.monotonic()
        while not self._closing:
            woke = time.monotonic() + every
            await asyncio.sleep(every)
            # How late this process's own event loop runs: a busy loop reads every
            # answer late, Redis's included, and that is not Redis being slow.
            late = max(0.0, time.monotonic() - woke)
            self._loop_lag = max(late, self._loop_lag / 2)
            if self.degraded:
                continue
            await self.sync()
            if time.monotonic() - last_renewal >= RENEW_EVERY_S and not self.degraded:
                last_renewal = time.monotonic()
                await self._renew()

    async def sync(self) -> None:
        """Report this process's load, count its requests, read everyone else's load;
        replay the settles Redis has not confirmed."""
        for grant in self._grants.retire_old():
            self._retired(grant)
        if self._unsent and self._started and not self.degraded:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_S):  # in the background: patient
                    await self._replay_unsent()
            except _REDIS_ERRORS as error:
                self._degrade(error)
        report = {}
        for name in self._names:
            stats, own = self.stats[name], self.local.load(name)
            report[name] = [
                own.in_flight,
                own.latency_ms * stats.attempts,
                min(own.expected_ms, 1e12) * stats.attempts,
                stats.attempts,
            ]
        requests, self._requests = self._requests, 0
        budget = self._budget.window_seconds if self._budget else 0
        ttl = max(3_000, round(self._config.sync_ms * 20))
        keys = [self._key["processes"], self._key["reports"], self._key["budget"]]
        args = (self._process, orjson.dumps(report), ttl, requests, budget)
        result: Any = _FAILED if self.degraded else await self._ask("SYNC", keys, args)
        if result is _FAILED:
            self._requests += requests
            return
        others: dict[str, list[float]] = {}
        processes = 1
        for process, payload in zip(result[::2], result[1::2], strict=True):
            if process.decode() == self._process:
                continue
            processes += 1
            for name, figures in orjson.loads(payload).items():
                total = others.setdefault(name, [0.0, 0.0, 0.0, 0.0])
                for index, figure in enumerate(figures):
                    total[index] += figure
        self._others = others
        self.local.share = processes

    async def _renew(self) -> None:
        by_entry: dict[str, list[str]] = {}
        for lease_id, name in list(self._held.items()):
            by_entry.setdefault(name, []).append(lease_id)
        for name, lease_ids in by_entry.items():
            self._write("RENEW", [self._entry_keys[name]["leases"]], LEASE_MS, *lease_ids)
        for report in await self._read_all_or_nothing():
            self._apply(report)

    async def _read_all_or_nothing(self) -> list[bytes]:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):  # in the background: patient
                return await self._read_all()
        except _REDIS_ERRORS as error:
            self._degrade(error)
            return []


_ENTRY_KINDS = ("circuit", "block", "rpm", "tpm", "leases")
_PINS_STALE = "\0polyroute:pins-stale"
"""A listener topic no announcement uses: its listener runs after every reconnect."""


def _granted(
    grant: Grant, rid: str, windows: tuple[ScopeWindow, ...], micros: int, ttl_s: float
) -> Reservation:
    """The reservation of a request admitted from ``grant``."""
    remaining = {scope: to_usd(max(0, left)) for scope, left in grant.remaining().items()}
    return Reservation(rid, windows, to_usd(micros), remaining, ttl_s, is_shared=True)
