"""What a gateway keeps beyond one request (docs/governance.md): the runtime keys of
its store, the spend ledger every served request is written to, the request log
(docs/observability.md), the admin API's key, and what requests saw of their
budgets, for ``/metrics``.

Nothing here is awaited on a request's path: a request's row and its record are
queued for background writers, and the keys are looked up in memory.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from polyroute.core.attempts import Attempt
from polyroute.core.errors import ConfigError, describe_error
from polyroute.core.logging import get_logger
from polyroute.core.pricing import Cost
from polyroute.core.redaction import register_secret
from polyroute.router.budget import BudgetPlan
from polyroute.router.config import GatewayConfig
from polyroute.router.observe import RequestRecord, TokenCounts, token_counts
from polyroute.router.router import Router
from polyroute.router.state import BudgetLimit
from polyroute.server.admin import AdminApi
from polyroute.server.keys import ClientKey, KeyRing
from polyroute.server.reload import ReloadSummary
from polyroute.server.store_keys import TOPIC, StoreKeys
from polyroute.store import (
    LedgerWriter,
    LogsConfig,
    RequestLogWriter,
    Retention,
    Store,
    StoreError,
    StoreUnavailableError,
)

_log = get_logger()

STORE_START_S = 5.0
"""How long the gateway waits at start for a store that does not answer."""
MIN_ADMIN_KEY_CHARS = 16
"""The admin key opens every key and budget: a short one could be guessed."""


Spent = TokenCounts
"""One request's tokens, summed over its attempts: the ledger counts them as the
request log does (:meth:`TokenCounts.of`)."""


@dataclass(frozen=True, slots=True)
class GovernanceFigures:
    """What ``/metrics`` shows of governance, read at scrape."""

    ledger_dropped: int
    ledger_queued: int
    store_unavailable: bool
    key_refresh_failures: int
    runtime_keys: int
    budget_remaining: Mapping[str, float]
    log_dropped: int = 0
    log_queued: int = 0


class Governance:
    """The store's keys, ledger and request log (``logs``) for one gateway, and its
    admin key (from ``gateway.admin_key_env``). Raises :class:`ConfigError` when that
    variable is unset."""

    def __init__(
        self,
        config: GatewayConfig,
        store: Store | None,
        environ: Mapping[str, str] | None = None,
        logs: LogsConfig | None = None,
    ) -> None:
        logs = logs or LogsConfig()
        self.store = store
        self.keys = StoreKeys(store, hold_s=config.budget_hold_s) if store is not None else None
        self.ledger = LedgerWriter(store) if store is not None else None
        self.request_log: RequestLogWriter | None = None
        """Where the router's records go (an observer of the router in service)."""
        self.retention: Retention | None = None
        if store is not None and logs.enabled:
            self.request_log = RequestLogWriter(store, max_queued=logs.max_queued)
            self.retention = Retention(store, logs.retention_days)
        self.admin_key = _admin_key(
            config.admin_key_env, os.environ if environ is None else environ
        )
        self._budgets: dict[str, BudgetLimit] = {}
        """Scope -> limit, for the budgets requests were held to (their gauge)."""
        self._noted: BudgetPlan | None = None
        """The plan whose limits were noted last."""

    def admin_api(
        self,
        user_keys: Callable[[], KeyRing],
        announce: Callable[[], Awaitable[None]],
        reload: Callable[[], Awaitable[ReloadSummary]] | None = None,
    ) -> AdminApi | None:
        """The admin API, when an admin key is configured; ``user_keys``: the gateway's
        keys in service, ``reload``: re-reads its config file."""
        if self.admin_key is None:
            return None
        return AdminApi(
            self.admin_key,
            store=self.store,
            keys=self.keys,
            user_keys=user_keys,
            announce=announce,
            reload=reload,
        )

    async def start(self, router: Router) -> None:
        """Connect the store (waiting at most :data:`STORE_START_S`: one that is down is
        logged, and used once it is back), load its keys, start the ledger's writer and
        the request log's (``router`` and the routers reloads make from it tell it of
        every request), and its retention."""
        if self.store is None or self.keys is None or self.ledger is None:
            return
        try:
            async with asyncio.timeout(STORE_START_S):
                await self.store.start()
        except (StoreUnavailableError, TimeoutError) as error:
            _log.warning("store.unavailable_at_start", **describe_error(error))
        shared = router.on_announcement(TOPIC, self.keys.wake)
        await self.keys.start(shared=lambda: shared and not router.state_figures()[0])
        self.ledger.start()
        if self.request_log is not None:
            router.observe(self.request_log)
            self.request_log.start()
        if self.retention is not None:
            self.retention.start()

    async def aclose(self) -> None:
        """Stop refreshing keys, flush the ledger and the request log (what the store
        cannot take now is counted as dropped), close the store."""
        if self.keys is not None:
            await self.keys.aclose()
        if self.retention is not None:
            await self.retention.aclose()
        if self.ledger is not None:
            await self.ledger.aclose()
        if self.request_log is not None:
            await self.request_log.aclose()
        if self.store is not None:
            try:
                await self.store.aclose()
            except StoreError as error:
                _log.warning("store.close_failed", **describe_error(error))

    def record(
        self,
        request_id: str,
        client: ClientKey | None,
        model: str,
        provider: str,
        attempts: list[Attempt],
        cost: Cost,
    ) -> None:
        """Queue a served request's row for the ledger; note its budgets for /metrics."""
        budget = client.budget if client is not None else None
        if budget is not None and budget is not self._noted:  # a key's plan is made once
            self._budgets.update(budget.limits)
            self._noted = budget
        if self.ledger is None:
            return
        inputs, cached, outputs, reasoning = token_counts(attempts)  # as Spent.of counts
        key_id, team_id = (client.ledger_key, client.ledger_team) if client else (None, None)
        self.ledger.served((
            request_id, time.time(), key_id, team_id, model, provider,
            inputs, cached, outputs, reasoning, cost.usd, cost.status,
        ))  # fmt: skip

    def log_refusal(self, record: RequestRecord) -> None:
        """Queue the record of a request the gateway refused before routing it (the
        router records the rest)."""
        if self.request_log is not None:
            self.request_log.request_ended(record)

    def figures(self, router: Router) -> GovernanceFigures:
        """As of now; a budget's remaining is its limit less what this process last
        heard was settled in its period (reservations in flight not counted)."""
        remaining = {
            scope: max(0.0, limit.usd - router.budget_spent(scope, limit))
            for scope, limit in self._budgets.items()
        }
        keys, ledger, log = self.keys, self.ledger, self.request_log
        return GovernanceFigures(
            ledger_dropped=ledger.dropped if ledger else 0,
            ledger_queued=ledger.queued if ledger else 0,
            store_unavailable=bool(keys and keys.unavailable),
            key_refresh_failures=keys.failures if keys else 0,
            runtime_keys=len(keys) if keys else 0,
            budget_remaining=remaining,
            log_dropped=log.dropped if log else 0,
            log_queued=log.queued if log else 0,
        )


def _admin_key(variable: str | None, environ: Mapping[str, str]) -> str | None:
    if variable is None:
        return None
    secret = environ.get(variable, "").strip()
    if not secret:
        raise ConfigError(
            f"gateway.admin_key_env: environment variable {variable} is not set; it must "
            "hold the admin API's key (or remove admin_key_env: no /admin then)"
        )
    register_secret(secret)
    if len(secret) < MIN_ADMIN_KEY_CHARS:
        raise ConfigError(
            f"gateway.admin_key_env: the key in {variable} is shorter than "
            f"{MIN_ADMIN_KEY_CHARS} characters: make a long random one "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return secret
