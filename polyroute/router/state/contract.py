"""What the router asks of its state, whichever backend keeps it.

Reads are synchronous and never wait on I/O (a shared backend answers them from a
local mirror); the decisions that must be atomic across processes (the half-open
probe, a slot under an entry's limits, an attempt out of the retry budget, a spend
reservation under budgets) are coroutines that a shared backend bounds by its timeout.
Records (stored responses) are kept with a TTL where every process finds them, and read
from the shared store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from polyroute.router.config import Limits, RetryBudget
from polyroute.router.health import HealthStore
from polyroute.router.state.budgets import BudgetDenied, BudgetLimit, Reservation
from polyroute.router.stats import StatsBook


class Denied(NamedTuple):
    """No headroom on an entry: why, and in how many seconds there may be some."""

    reason: str
    retry_in: float = 0.0


@dataclass(slots=True)
class Load:
    """An entry's figures across every process sharing the state."""

    in_flight: int = 0
    latency_ms: float = 0.0
    """Time to first chunk (0 when never measured, so that it gets measured)."""
    expected_ms: float = 0.0
    """Expected time to a whole answer, failures counted (see ``EntryStats``)."""


class Lease:
    """One attempt's place on an entry: counted in flight (and under the entry's limits)
    until :meth:`end`, which takes the tokens the attempt used, when known."""

    __slots__ = ("_end", "ended", "name", "tokens")

    def __init__(self, name: str, tokens: int, end: Callable[[Lease, int | None], None]) -> None:
        self.name = name
        self.tokens = tokens
        self.ended = False
        self._end = end

    def end(self, tokens_used: int | None = None) -> None:
        """Give the place back (once; later calls do nothing)."""
        if not self.ended:
            self.ended = True
            self._end(self, tokens_used)


TokenEstimate = Callable[[], int]
"""Tokens a request is expected to use, asked only for entries with a ``tpm`` limit."""


class RoutingState(HealthStore, Protocol):
    """Circuits (:class:`HealthStore`), limits, retry budget and load, for the router;
    records with a TTL, for the gateway's stored responses; spend budgets, for the
    gateway's keys and teams."""

    stats: StatsBook
    """This process's own figures per entry (the shared ones: :meth:`load`)."""
    decisions: dict[str, int]
    """Decisions that needed the shared store, by where they were taken (``shared``, or
    ``local`` when it was late or down); empty for a store of one process."""

    @property
    def degraded(self) -> bool:
        """The shared store is unreachable: this process decides alone."""
        ...

    async def start(self) -> None:
        """Connect and load what is shared (idempotent; requests never wait for it)."""
        ...

    def ensure_started(self) -> None:
        """Start connecting in the background if :meth:`start` was never awaited."""
        ...

    def reconfigure(
        self,
        *,
        names: list[str],
        failures: int,
        cooldown_seconds: float,
        limits: Mapping[str, Limits],
        budget: RetryBudget | None,
    ) -> None:
        """Take a new configuration's entries (``names``) and rules (a config reload),
        at once and without I/O. Everything counted so far stays: circuits (by entry
        name; a removed entry's is left as it is, for requests still on it), entries'
        limit windows, the retry budget's window, key windows, budgets' spend and holds,
        records. The new ``limits``, ``failures``, ``cooldown_seconds`` and retry
        ``budget`` apply from the next decision on, to requests in flight too."""
        ...

    async def aclose(self) -> None: ...

    async def acquire(self, name: str, estimate: TokenEstimate) -> Lease | Denied:
        """A place for one attempt on ``name``, or why there is none."""
        ...

    def block(self, name: str, seconds: float, reason: str) -> None:
        """Skip ``name`` for ``seconds``, everywhere: its upstream said it has no
        requests or tokens left until then (rate-limit headers)."""
        ...

    async def admit_key(self, key: str, rpm: int) -> float | None:
        """Count one request of gateway key ``key`` under its ``rpm``: ``None`` when
        admitted, else the seconds until it would be."""
        ...

    async def admit_key_tokens(self, key: str, tpm: int, tokens: int) -> Lease | Denied:
        """Count ``tokens`` (an estimate) of gateway key ``key`` in its tokens-per-minute
        window: a :class:`Lease` whose ``end(used)`` replaces the estimate with what the
        request used, or :class:`Denied` while the window holds ``tpm`` already (as for
        an entry's ``tpm``: two fixed windows, the older one weighted)."""
        ...

    def count_request(self) -> None:
        """One routed request: feeds the retry budget."""
        ...

    async def spend_attempt(self) -> bool:
        """Take one retry or fallback attempt out of the budget; False when spent."""
        ...

    def load(self, name: str) -> Load: ...

    async def sync(self) -> None:
        """Exchange load figures and request counts with the other processes now
        (a shared backend does it every ``sync_ms`` by itself)."""
        ...

    async def put_record(self, key: str, value: bytes, ttl_s: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl_s`` seconds, replacing any record there,
        for every process sharing the state; only for this one when the shared store is
        unreachable or late (logged, never raised). Returns once the record is kept: a
        shared backend waits at most its timeout plus a margin for the size of a value.

        Raises ``ValueError`` when ``ttl_s`` is not positive and finite, or the record is
        over the bound of one process's record store (docs/shared-state.md)."""
        ...

    async def get_record(self, key: str) -> bytes | None:
        """The value kept under ``key``; ``None`` when there is none, or it has expired.
        A shared backend that cannot ask its store answers from this process's records."""
        ...

    async def delete_record(self, key: str) -> bool:
        """Drop the record under ``key``; whether there was one. A shared backend that
        cannot reach its store drops only this process's copy."""
        ...

    async def reserve(
        self, scopes: Mapping[str, BudgetLimit], amount_usd: float, ttl_s: float
    ) -> Reservation | BudgetDenied:
        """Hold ``amount_usd`` on every scope of ``scopes`` at once, in each one's current
        period window, or on none: a scope has room when ``settled + reserved + amount <=
        usd``. The first scope without room is named in :class:`BudgetDenied`. A
        reservation neither settled nor released stops counting after ``ttl_s`` seconds.

        Never raises for the shared store: a shared backend that cannot ask it decides
        from this process's figures (docs/shared-state.md says what that costs in
        exactness). Raises ``ValueError`` for an amount that is negative or not finite,
        or a ``ttl_s`` that is not positive and finite."""
        ...

    def reserve_at_once(
        self, scopes: Mapping[str, BudgetLimit], amount_usd: float, ttl_s: float
    ) -> Reservation | BudgetDenied | None:
        """:meth:`reserve` when this process decides it without waiting (the memory
        backend always; a shared one from a grant with room, or while its store is out
        of reach); ``None`` when only the shared store can (then await :meth:`reserve`).
        Every budgeted request asks: a coroutine less each time."""
        ...

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Count ``actual_usd`` (below or above the amount reserved: it is the truth) as
        settled spend on the reservation's scopes, in the windows it was reserved in, and
        stop holding the reservation. Once: a reservation settled or released already is
        left as it is. Raises ``ValueError`` for an amount negative or not finite."""
        ...

    def settle_soon(self, reservation: Reservation, actual_usd: float) -> None:
        """:meth:`settle` without waiting: counted in this process at once; a shared
        backend sends it with its next batch of calls (and keeps it until its store has
        it, as :meth:`settle` does), and its ``aclose`` sends what is still queued."""
        ...

    async def release_reservation(self, reservation: Reservation) -> None:
        """Stop holding ``reservation`` and count nothing (a request that produced
        nothing); once, like :meth:`settle`. (Not ``release``: that name gives back a
        half-open probe, from :class:`HealthStore`.)"""
        ...

    def spent(self, scope: str, limit: BudgetLimit) -> float:
        """USD settled on ``scope`` in its current window, as this process knows it: a
        shared backend answers from what its store last said about the scope (best
        effort, no I/O)."""
        ...

    async def remaining(self, scope: str, limit: BudgetLimit) -> float:
        """USD left on ``scope`` in its current window (reservations counted, never below
        0); a shared backend asks its store, or answers from this process's figures."""
        ...

    # Affinity pins: which entry a conversation (or user, or key) was served by ----------

    async def get_pin(self, key: str, ttl_s: float) -> str | None:
        """The entry pinned under ``key``, its idle time to expiry renewed to ``ttl_s``;
        ``None`` when there is none (never pinned, or idle past its TTL). A shared
        backend answers from this process's copy of a pin it made or read (copies follow
        the moves other processes make), and asks its store, within its timeout, for a
        pin it holds no copy of (``None`` when the store cannot answer)."""
        ...

    async def put_pin(self, key: str, entry: str, ttl_s: float) -> None:
        """Pin ``key`` to ``entry`` for ``ttl_s`` seconds of idleness, for every process
        sharing the state: a shared backend returns once its store has the pin (the
        conversation's next turn may come through another process at once), waiting at
        most its timeout, and keeps a copy in this process. Never raises for the store."""
        ...

    def listen(self, topic: str, listener: Callable[[], None]) -> bool:
        """Call ``listener`` (on this process's loop) whenever a process sharing the
        state, this one included, announces ``topic``, and after a shared store that was
        unreachable is back (announcements may have been missed). Whether other
        processes' announcements reach this one (``False``: a state of one process)."""
        ...

    async def announce(self, topic: str) -> None:
        """Tell every process sharing the state, this one included, that ``topic``
        happened. Best effort, never raises: lost while a shared store is unreachable."""
        ...

    def describe_backend(self) -> str:
        """For people: which backend, and whether it is reachable."""
        ...
