"""Gateway keys: who may call, for which models, how often, for how much.

Keys are compared in constant time (against every configured key, whichever
matches) and registered as secrets so that no log line or error can show one. Their
``rpm`` (and their team's) and budgets are counted by the router's state: per process
with ``state: memory``, across every gateway sharing the Redis with ``state: redis``
(docs/shared-state.md, docs/governance.md).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from polyroute.core.errors import ConfigError
from polyroute.core.redaction import register_secret
from polyroute.router.budget import DEFAULT_HOLD_S, BudgetPlan
from polyroute.router.config import BudgetConfig, GatewayKey, GatewayTeam
from polyroute.router.state import BudgetLimit


@dataclass(slots=True)
class ClientKey:
    """A configured key, resolved from its environment variable."""

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

    def allows(self, *models: str) -> bool:
        return self.models is None or any(model in self.models for model in models)


class KeyRing:
    """The gateway's keys; empty means the gateway is open (loopback only)."""

    def __init__(
        self,
        keys: Sequence[GatewayKey],
        teams: Sequence[GatewayTeam] = (),
        hold_s: float = DEFAULT_HOLD_S,
    ) -> None:
        by_name = {team.name: team for team in teams}
        self.keys = [
            _resolve(key, by_name.get(key.team) if key.team else None, hold_s) for key in keys
        ]

    def __bool__(self) -> bool:
        return bool(self.keys)

    def find(self, headers: Mapping[str, str]) -> ClientKey | None:
        """The key in ``Authorization: Bearer ...`` or, as Anthropic's clients send it,
        in ``x-api-key``; ``None`` when neither holds a configured key."""
        scheme, _, given = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            given = headers.get("x-api-key", "")
        if not given:
            return None
        presented = given.strip().encode()
        found = None
        for key in self.keys:  # every key is compared: the time says nothing of which
            if hmac.compare_digest(key.secret, presented):
                found = key
        return found


def _resolve(key: GatewayKey, team: GatewayTeam | None, hold_s: float) -> ClientKey:
    secret = os.environ.get(key.key_env)
    if not secret:
        raise ConfigError(
            f"gateway key {key.name!r}: environment variable {key.key_env} (key_env) is not set"
        )
    register_secret(secret)
    models = frozenset(key.models) if key.models is not None else None
    budgets = [(f"key:{key.name}", key.budget)]
    if team is not None:
        budgets.append((f"team:{team.name}", team.budget))
    limits = {scope: _limit(budget) for scope, budget in budgets if budget is not None}
    plan = None
    if limits:
        answer = max(budget.default_max_tokens for _, budget in budgets if budget is not None)
        plan = BudgetPlan(limits, answer, hold_s)
    return ClientKey(
        key.name,
        secret.encode(),
        models,
        key.rpm,
        key.cache,
        team=team.name if team else None,
        team_rpm=team.rpm if team else None,
        budget=plan,
    )


def _limit(budget: BudgetConfig) -> BudgetLimit:
    return BudgetLimit(budget.usd, budget.period)
