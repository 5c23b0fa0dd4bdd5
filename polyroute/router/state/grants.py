"""Budget grants: room on a budget that one process holds in Redis, so that most of
its requests reserve without a round trip (docs/shared-state.md#grants).

A grant is an ordinary reservation in Redis (the ``RESERVE`` script, all of a request's
scopes at once), taken for many requests' worst case. The process then admits requests
from it in memory until it is used up or a second old; it is settled (the ``SETTLE``
script: its hold given back, what its requests cost counted) once the last request
admitted from it ends. Every request is still admitted against room Redis held for it,
so the exactness bound of per-request reservations stands; what a grant costs is the
other way round: room another process holds and has not used yet is not this
process's, so near the end of a budget a request may be refused that would have fitted
a moment later. That is why a grant takes at most a ``GRANT_SHARE``-th of what each
process may have, and none is taken when that is less than two requests' worth: the
last of a budget goes request by request, as without grants.

This module is the bookkeeping of one process, without I/O; the Redis state takes and
settles grants.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from polyroute.router.state.budgets import Clock, ScopeWindow

GRANT_SHARE = 4
"""A grant takes at most this fraction (1/4) of what is left, split by the processes."""
GRANT_MAX_AGE_S = 1.0
"""A grant admits no request after this long (its spend then reaches Redis)."""
GRANT_MAX_SCALE = 8
"""A grant used up within half its age makes the next on its windows twice as large, up
to this many times ``requests`` (one that ages out halves it again): at hundreds of
requests a second, 64 requests' worth meant a Redis round trip every 0.1 s."""

Windows = tuple[ScopeWindow, ...]


@dataclass(slots=True, eq=False)
class Grant:
    """Room held in Redis on ``windows`` under the reservation id ``id``."""

    id: str
    windows: Windows
    micros: int
    """Held in Redis."""
    left_beside: dict[str, int]
    """Scope -> micro-dollars Redis said were left there, this grant counted as held."""
    ttl_s: float
    taken_at: float
    free: int = 0
    """Not yet admitted."""
    drawn: int = 0
    """Requests admitted from it that have not ended."""
    spent: int = 0
    """What the requests admitted from it and ended cost."""
    retired: bool = False
    """It admits no more requests."""
    shrunk_from: str | None = None
    """Its member before a shrink Redis has not confirmed: given back with its settle
    too, whichever of the two Redis holds."""

    @property
    def member(self) -> str:
        """Its member in Redis's holds (what the ``SETTLE`` script gives back)."""
        return f"{self.id}={self.micros}"

    def remaining(self) -> dict[str, int]:
        """Scope -> micro-dollars left as this process knows it: what was left beside
        the grant when it was taken, and what the grant has not admitted."""
        return {scope: left + self.free for scope, left in self.left_beside.items()}


@dataclass(slots=True)
class GrantBook:
    """One process's grants: the one admitting requests for each set of windows, and
    which grant each admitted request came from."""

    requests: int
    """A grant asks for this many times the request's worst case (0: no grants)."""
    clock: Clock = time.monotonic
    current: dict[Windows, Grant] = field(default_factory=dict)
    room: dict[Windows, int] = field(default_factory=dict)
    """Windows -> the least left on any of them, as Redis last said."""
    _from: dict[str, Grant] = field(default_factory=dict)
    """Reservation id -> the grant it was admitted from."""
    _scale: dict[Windows, int] = field(default_factory=dict)
    """Windows -> how many times ``requests`` their next grant asks for."""

    def admit(self, windows: Windows, micros: int, rid: str) -> Grant | None:
        """Admit a request of ``micros`` from the current grant on ``windows``: the
        grant, or ``None`` when there is none, or it is too old or too small (the caller
        retires it and takes a new one, or asks Redis for this request alone)."""
        grant = self.current.get(windows)
        if grant is None or grant.free < micros:
            return None
        if self.clock() - grant.taken_at >= GRANT_MAX_AGE_S:
            return None
        grant.free -= micros
        grant.drawn += 1
        self._from[rid] = grant
        return grant

    def wanted(self, windows: Windows, micros: int, processes: int) -> int:
        """How much a new grant on ``windows`` should hold for a request of ``micros``:
        0 when grants are off or too little is left for one to be worth it."""
        want = micros * self.requests * self._scale.get(windows, 1)
        room = self.room.get(windows)
        if room is not None:
            want = min(want, room // (GRANT_SHARE * max(1, processes)))
        return want if want >= 2 * micros > 0 else 0

    def install(self, grant: Grant) -> None:
        grant.free = grant.micros
        self.current[grant.windows] = grant

    def retire(self, windows: Windows) -> Grant | None:
        """Stop admitting from the current grant on ``windows`` (if there is one): it
        is to be settled now when no request from it is running (else by :meth:`end`
        of its last one), and its part not admitted given back."""
        grant = self.current.pop(windows, None)
        if grant is not None:
            grant.retired = True
            self._rescale(grant)
        return grant

    def _rescale(self, grant: Grant) -> None:
        """Size the next grant on ``grant``'s windows by how fast this one went."""
        scale = self._scale.get(grant.windows, 1)
        if self.clock() - grant.taken_at < GRANT_MAX_AGE_S / 2:
            scale = min(scale * 2, GRANT_MAX_SCALE)
        else:
            scale = max(scale // 2, 1)
        if len(self._scale) >= 1024 and grant.windows not in self._scale:
            self._scale.clear()  # bounded: one entry per budgeted key's windows
        self._scale[grant.windows] = scale

    def retire_old(self) -> list[Grant]:
        """Retire every grant past its age."""
        now = self.clock()
        old = [w for w, g in self.current.items() if now - g.taken_at >= GRANT_MAX_AGE_S]
        return [grant for windows in old if (grant := self.retire(windows)) is not None]

    def retire_all(self) -> list[Grant]:
        return [grant for windows in list(self.current) if (grant := self.retire(windows))]

    @staticmethod
    def shrink(grant: Grant) -> str:
        """Hold only what a retired grant admitted: its old member (its new one is
        :attr:`Grant.member`)."""
        old = grant.shrunk_from = grant.member
        grant.micros -= grant.free
        grant.free = 0
        return old

    def end(self, rid: str, micros: int) -> tuple[bool, Grant | None]:
        """A request ended at ``micros``: whether it was admitted from a grant, and that
        grant when it is now to be settled (retired, and this was its last request)."""
        grant = self._from.pop(rid, None)
        if grant is None:
            return False, None
        grant.drawn -= 1
        grant.spent += micros
        return True, grant if grant.retired and grant.drawn == 0 else None
