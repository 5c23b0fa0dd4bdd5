"""What the router asks of its state, whichever backend keeps it.

Reads are synchronous and never wait on I/O (a shared backend answers them from a
local mirror); the decisions that must be atomic across processes (the half-open
probe, a slot under an entry's limits, an attempt out of the retry budget) are
coroutines that a shared backend bounds by its timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from polyroute.router.health import HealthStore
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
    """Circuits (:class:`HealthStore`), limits, retry budget and load, for the router."""

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

    def describe_backend(self) -> str:
        """For people: which backend, and whether it is reachable."""
        ...
