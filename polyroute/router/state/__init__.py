"""Routing state: circuits, provider limits, the retry budget, load figures, and spend
budgets (:mod:`.budgets`).

One contract (:mod:`.contract`), two backends: :class:`MemoryState` keeps it in this
process, :class:`RedisState` shares it with every process and host using the same
Redis (docs/shared-state.md). :func:`build_state` picks one from the config.
"""

from __future__ import annotations

from collections.abc import Mapping

from polyroute.core.errors import ConfigError
from polyroute.core.periods import Period, PeriodWindow, period_window
from polyroute.router.config import Limits, RetryBudget, StateConfig
from polyroute.router.health import HealthStore, InMemoryHealth
from polyroute.router.state.budgets import BudgetDenied, BudgetLimit, Reservation
from polyroute.router.state.contract import Denied, Lease, Load, RoutingState
from polyroute.router.state.memory import MemoryState
from polyroute.router.stats import StatsBook

__all__ = [
    "BudgetDenied",
    "BudgetLimit",
    "Denied",
    "Lease",
    "Load",
    "MemoryState",
    "Period",
    "PeriodWindow",
    "Reservation",
    "RoutingState",
    "build_state",
    "period_window",
]


def build_state(
    config: StateConfig,
    *,
    health: HealthStore | None,
    names: list[str],
    failures: int,
    cooldown_seconds: float,
    limits: Mapping[str, Limits],
    budget: RetryBudget | None,
) -> RoutingState:
    """The backend ``config`` names; ``health`` (a custom circuit store) only with memory."""
    stats = StatsBook()
    if health is not None and config.backend != "memory":
        raise ConfigError("health= replaces the circuits of the memory state backend only")
    if config.backend == "memory":
        circuits = health or InMemoryHealth(failures=failures, seconds=cooldown_seconds)
        return MemoryState(circuits, stats, limits=limits, budget=budget)
    from polyroute.router.state.redis import RedisState  # needs the optional redis package

    return RedisState(
        config,
        stats,
        names=names,
        failures=failures,
        cooldown_seconds=cooldown_seconds,
        limits=limits,
        budget=budget,
    )
