"""Runtime keys: every active key of the store, kept in this process's memory.

The store is never on a request's path (STYLE.md, "Money and records"): a request's
key is looked up here, by the SHA-256 of the secret it presents (a dictionary lookup:
its time says nothing of how close a guess came). The keys are loaded when the gateway
starts and kept fresh in the background from ``keys_changed_since``: at once when
another gateway announces a change through the routing state (Redis pub/sub), and by
polling ``keys_version`` (one small query) every 0.5 s otherwise, every 2 s as a safety
net while announcements arrive. A store that is down or slow changes nothing for the
keys known here: they keep working, the failure is logged once and counted.

Expiry and the end of a rotation's grace are checked at each lookup, against the clock:
they take effect to the second, whatever the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from polyroute.core.errors import describe_error
from polyroute.core.logging import get_logger
from polyroute.core.periods import utc_now
from polyroute.router.state import BudgetLimit
from polyroute.server.keys import ClientKey, KeyMemo, budget_plan
from polyroute.store import KeyRecord, Store, StoreError, TeamRecord, hash_secret

_log = get_logger()

TOPIC = "keys"
"""What a gateway announces through the routing state when it changed a key or team."""
POLL_ALONE_S = 0.5
"""How often ``keys_version`` is asked when no announcement can arrive."""
POLL_SHARED_S = 2.0
"""How often it is asked while announcements arrive (a safety net for a lost one)."""
REFRESH_TIMEOUT_S = 5.0
"""A refresh slower than this counts as the store being unavailable."""


@dataclass(frozen=True, slots=True)
class _Known:
    record: KeyRecord
    client: ClientKey
    hashes: tuple[str, ...]


class StoreKeys:
    """The store's keys in memory (see the module). ``find`` never does I/O; ``start``
    runs the background refresh until :meth:`aclose`."""

    def __init__(
        self,
        store: Store,
        *,
        hold_s: float,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.version = 0
        """The store's key version this process has read up to."""
        self.loaded = False
        self.unavailable = False
        """The last refresh failed: the store is down or slow (the keys known still work)."""
        self.failures = 0
        """Refreshes that failed since start."""
        self._hold_s = hold_s
        self._now = now
        self.changes = 0
        """Counts every change to the keys known (a connection's memo of its key holds
        while it stays the same)."""
        self._by_hash: dict[str, _Known] = {}
        self._by_id: dict[str, _Known] = {}
        self._teams: dict[str, TeamRecord] = {}
        self._seen: dict[str, datetime] = {}
        """Key id -> ``updated_at`` of the newest record applied (revoked ones too)."""
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._poll_s: Callable[[], float] = lambda: POLL_ALONE_S

    def __len__(self) -> int:
        """Keys known (not revoked; expired ones included until they are changed)."""
        return len(self._by_id)

    def find(self, secret: str, memo: KeyMemo | None = None) -> ClientKey | None:
        """The key whose secret, or previous secret still in its rotation grace, this
        is; ``None`` when none is, or it has expired. ``memo``: the connection's; a key
        without expiry found by its current secret is kept there until the keys
        known change (a revocation, a rotation, new limits: any of them)."""
        if (
            memo is not None
            and memo.keys is self
            and memo.version == self.changes
            and memo.secret == secret
        ):
            return memo.client
        digest = hash_secret(secret)
        known = self._by_hash.get(digest)
        if known is None:
            return None
        record = known.record
        if record.expires_at is None and digest == record.secret_hash:
            if memo is not None:  # the common case: no clock to read, nothing to expire
                memo.keys, memo.version, memo.secret = self, self.changes, secret
                memo.client = known.client
            return known.client
        now = self._now()
        if record.expires_at is not None and now >= record.expires_at:
            return None
        if digest != record.secret_hash and (
            record.previous_valid_until is None or now >= record.previous_valid_until
        ):
            return None
        return known.client

    def wake(self) -> None:
        """Refresh now (another process announced a change)."""
        self._wake.set()

    async def start(self, *, shared: Callable[[], bool]) -> None:
        """Load the keys (waiting at most :data:`REFRESH_TIMEOUT_S`: a store that is down
        at start is logged, and the keys come once it is back), then refresh in the
        background. ``shared``: whether announcements reach this process now."""
        self._poll_s = lambda: POLL_SHARED_S if shared() else POLL_ALONE_S
        await self._refresh_logged()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="polyroute-keys")

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def refresh(self) -> None:
        """Read what changed in the store since :attr:`version` (raises what it raises)."""
        version = await self.store.keys_version()
        if self.loaded and version == self.version:
            return
        changes = await self.store.keys_changed_since(self.version)
        teams = None
        if any(key.team_id for key in changes.keys):
            teams = {team.id: team for team in await self.store.list_teams()}
        self.apply(changes.keys, teams)
        self.version = changes.version
        self.loaded = True

    def apply(
        self, keys: Iterable[KeyRecord], teams: Mapping[str, TeamRecord] | None = None
    ) -> None:
        """Take ``keys`` as the store has them now (and ``teams``, which replace the
        ones known). A record older than the one known is ignored: an admin call applies
        its change here at once, and a refresh that read before it must not undo it."""
        if teams is not None:
            self._teams.update(teams)
        for record in keys:
            seen = self._seen.get(record.id)
            if seen is not None and record.updated_at < seen:
                continue
            self._seen[record.id] = record.updated_at
            self._forget(record.id)
            if record.revoked_at is None:
                self._remember(record)

    def apply_team(self, team: TeamRecord) -> None:
        """Take a team's change: its keys are held to its new limits at once."""
        self._teams[team.id] = team
        for known in [k for k in self._by_id.values() if k.record.team_id == team.id]:
            self._forget(known.record.id)
            self._remember(known.record)

    def _remember(self, record: KeyRecord) -> None:
        hashes: tuple[str, ...] = (record.secret_hash,)
        if record.previous_hash is not None and record.previous_valid_until is not None:
            hashes = (record.secret_hash, record.previous_hash)
        known = _Known(record, self._client(record), hashes)
        self.changes += 1
        self._by_id[record.id] = known
        for digest in hashes:
            self._by_hash[digest] = known

    def _forget(self, key_id: str) -> None:
        known = self._by_id.pop(key_id, None)
        if known is None:
            return
        self.changes += 1
        for digest in known.hashes:
            if self._by_hash.get(digest) is known:
                del self._by_hash[digest]

    def _client(self, record: KeyRecord) -> ClientKey:
        team = self._teams.get(record.team_id) if record.team_id else None
        budgets = [(f"key:{record.id}", _limit(record.budget_usd, record.budget_period))]
        if team is not None:
            budgets.append((f"team:{team.id}", _limit(team.budget_usd, team.budget_period)))
        return ClientKey(
            record.name,
            b"",
            frozenset(record.models) if record.models is not None else None,
            record.rpm,
            team=team.name if team else None,
            team_rpm=team.rpm if team else None,
            budget=budget_plan(budgets, self._hold_s),
            id=record.id,
            team_id=team.id if team else None,
            tpm=record.tpm,
            team_tpm=team.tpm if team else None,
            log_content=record.log_content,
        )

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s()):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_S):
                await self.refresh()
        except (StoreError, TimeoutError) as error:
            self.failures += 1
            if not self.unavailable:  # once per outage: the keys known go on working
                self.unavailable = True
                _log.warning("keys.store_unavailable", known=len(self), **describe_error(error))
            return
        if self.unavailable:
            self.unavailable = False
            _log.info("keys.store_restored", known=len(self), version=self.version)


def _limit(usd: float | None, period: str | None) -> BudgetLimit | None:
    if usd is None or period is None:
        return None
    return BudgetLimit(usd, period)  # type: ignore[arg-type]  # the store checked the period
