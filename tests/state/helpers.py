"""Building routing states for tests, and waiting on what another process shares."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from polyroute.router.config import Limits, RetryBudget, StateConfig
from polyroute.router.health import InMemoryHealth
from polyroute.router.state import MemoryState, RoutingState, build_state
from polyroute.router.stats import StatsBook
from tests.clock import Clock


def memory(clock: Clock, **bounds: int) -> MemoryState:
    """A state in this process on ``clock`` (``bounds``: its records' limits)."""
    health = InMemoryHealth(failures=2, seconds=30, clock=clock)
    return MemoryState(health, StatsBook(), limits={}, budget=None, clock=clock, **bounds)


def make_state(
    backend: str,
    url: str = "",
    *,
    names: tuple[str, ...] = ("a", "b"),
    failures: int = 2,
    seconds: float = 30.0,
    limits: dict[str, dict[str, int]] | None = None,
    budget: dict[str, Any] | None = None,
    **state: Any,
) -> RoutingState:
    config = StateConfig(backend=backend, url=url or StateConfig().url, **state)
    return build_state(
        config,
        health=None,
        names=list(names),
        failures=failures,
        cooldown_seconds=seconds,
        limits={name: Limits(**value) for name, value in (limits or {}).items()},
        budget=RetryBudget(**budget) if budget is not None else None,
    )


async def until(condition: Callable[[], bool], within: float = 5.0) -> float:
    """Wait until ``condition()`` holds (checked on every loop turn, briefly yielding);
    the seconds it took. Fails past ``within`` seconds."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > within:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.001)
    return time.perf_counter() - started
