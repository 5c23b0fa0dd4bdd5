"""Gateway keys: who may call, for which models, how often, for how much.

Two sources, one ring. Keys of the config file (``gateway.keys``) are compared in
constant time (against every configured key, whichever matches) and registered as
secrets so that no log line or error can show one. Keys made at runtime live in the
store; each process keeps them in memory (:mod:`polyroute.server.store_keys`) and finds
one by the SHA-256 of the secret presented, so a lookup says nothing by its timing and
never waits on the database. Their ``rpm``, ``tpm`` (and their team's) and budgets are
counted by the router's state: per process with ``state: memory``, across every gateway
sharing the Redis with ``state: redis`` (docs/shared-state.md, docs/governance.md).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from polyroute.core.errors import ConfigError
from polyroute.core.redaction import register_secret
from polyroute.router.budget import DEFAULT_HOLD_S, DEFAULT_MAX_TOKENS, BudgetPlan
from polyroute.router.config import BudgetConfig, GatewayKey, GatewayTeam
from polyroute.router.state import BudgetLimit


@dataclass(frozen=True, slots=True)
class KeyLimit:
    """One counter a key's requests are held to: its own, or its team's."""

    counter: str
    """What the state counts under (``key:<id>`` for a store key, the name for a config
    key; ``team:<id or name>``)."""
    who: str
    """How a refusal names it: ``key 'ci'``, ``team 'search'``."""
    rpm: int | None
    tpm: int | None


@dataclass(slots=True)
class ClientKey:
    """A key the gateway accepts: from the config (its secret resolved from its
    environment variable) or from the store (``id`` set; no secret kept)."""

    name: str
    secret: bytes
    models: frozenset[str] | None
    rpm: int | None
    cache: str | None = None
    """The response cache mode of its requests, unless they say (``x-polyroute-cache``)."""
    team: str | None = None
    team_rpm: int | None = None
    budget: BudgetPlan | None = None
    """Its budget and its team's, which every request of it is held to."""
    id: str | None = None
    """The store's id of a runtime key; ``None`` for a config key."""
    team_id: str | None = None
    tpm: int | None = None
    team_tpm: int | None = None
    log_content: bool | None = None
    """Whether its requests' content goes in the access log; ``None``: the gateway's."""
    _limits: tuple[KeyLimit, ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def allows(self, *models: str) -> bool:
        return self.models is None or any(model in self.models for model in models)

    @property
    def ledger_key(self) -> str:
        """Its id in the spend ledger: the store's id, or a config key's name."""
        return self.id or self.name

    @property
    def ledger_team(self) -> str | None:
        return self.team_id or self.team

    def limits(self) -> tuple[KeyLimit, ...]:
        """Its own counter, then its team's, each with its limits (made once: a key is
        made anew when its settings change)."""
        if self._limits is None:
            own = KeyLimit(f"key:{self.id}" if self.id else self.name, f"key {self.name!r}",
                           self.rpm, self.tpm)  # fmt: skip
            if self.team is None:
                self._limits = (own,)
            else:
                team = KeyLimit(f"team:{self.team_id or self.team}", f"team {self.team!r}",
                                self.team_rpm, self.team_tpm)  # fmt: skip
                self._limits = (own, team)
        return self._limits


class KeyMemo:
    """One connection's last key from the store: the secret it presented, and the key
    found, while the keys known have not changed since (a kept-alive client sends the
    same key with every request: it is hashed once). Compared with ``==``: the secret
    is the one this connection itself sent before, so the time says nothing of
    another's."""

    __slots__ = ("client", "keys", "secret", "version")

    def __init__(self) -> None:
        self.keys: object = None
        """The keys it was found in (a reload's new ones find it again)."""
        self.version = -1
        """Their :attr:`~polyroute.server.store_keys.StoreKeys.changes` then."""
        self.secret = ""
        self.client: ClientKey | None = None


class RuntimeKeys(Protocol):
    """Keys kept in memory from the store (:class:`~polyroute.server.store_keys.StoreKeys`)."""

    def find(self, secret: str, memo: KeyMemo | None = None) -> ClientKey | None:
        """The active key whose secret (or previous one, in its rotation grace) this is;
        ``memo``: the connection's, kept when the key found can be."""
        ...


class KeyRing:
    """The gateway's keys: the config's and, with a store, the runtime ones. Empty
    (no config keys and no store) means the gateway is open (loopback only)."""

    def __init__(
        self,
        keys: Sequence[GatewayKey],
        teams: Sequence[GatewayTeam] = (),
        hold_s: float = DEFAULT_HOLD_S,
        runtime: RuntimeKeys | None = None,
    ) -> None:
        by_name = {team.name: team for team in teams}
        self.keys = [
            _resolve(key, by_name.get(key.team) if key.team else None, hold_s) for key in keys
        ]
        self.runtime = runtime

    def __bool__(self) -> bool:
        return bool(self.keys) or self.runtime is not None

    def find(self, headers: Mapping[str, str], memo: KeyMemo | None = None) -> ClientKey | None:
        """The key in ``Authorization: Bearer ...`` or, as Anthropic's clients send it,
        in ``x-api-key``; ``None`` when neither holds a key the gateway accepts.
        ``memo``: the connection's (:class:`KeyMemo`), for a key from the store."""
        presented = presented_key(headers)
        if not presented:
            return None
        given = presented.encode()
        found = None
        for key in self.keys:  # every key is compared: the time says nothing of which
            if hmac.compare_digest(key.secret, given):
                found = key
        if found is None and self.runtime is not None:
            found = self.runtime.find(presented, memo)
        return found


def presented_key(headers: Mapping[str, str]) -> str:
    """The key a request presents: ``Authorization: Bearer ...``, else ``x-api-key``."""
    scheme, _, given = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        given = headers.get("x-api-key", "")
    return given.strip()


def budget_plan(
    budgets: Sequence[tuple[str, BudgetLimit | None]],
    hold_s: float,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> BudgetPlan | None:
    """The plan of the budgets given by scope (``None`` ones left out), or ``None``."""
    limits = {scope: limit for scope, limit in budgets if limit is not None}
    return BudgetPlan(limits, default_max_tokens, hold_s) if limits else None


def _resolve(key: GatewayKey, team: GatewayTeam | None, hold_s: float) -> ClientKey:
    secret = os.environ.get(key.key_env)
    if not secret:
        raise ConfigError(
            f"gateway key {key.name!r}: environment variable {key.key_env} (key_env) is not set"
        )
    register_secret(secret)
    models = frozenset(key.models) if key.models is not None else None
    configs = [(f"key:{key.name}", key.budget)]
    if team is not None:
        configs.append((f"team:{team.name}", team.budget))
    budgets = [(scope, _limit(config) if config else None) for scope, config in configs]
    answer = max((config.default_max_tokens for _, config in configs if config), default=0)
    return ClientKey(
        key.name,
        secret.encode(),
        models,
        key.rpm,
        key.cache,
        team=team.name if team else None,
        team_rpm=team.rpm if team else None,
        budget=budget_plan(budgets, hold_s, answer or DEFAULT_MAX_TOKENS),
        tpm=key.tpm,
        team_tpm=team.tpm if team else None,
    )


def _limit(budget: BudgetConfig) -> BudgetLimit:
    return BudgetLimit(budget.usd, budget.period)
