"""Requests held to budgets: the most a request may cost is reserved on its budgets
before any upstream is called, and settled at what it did cost once it ends
(docs/governance.md). The routing state keeps the sums, across processes when it is
shared (polyroute.router.state.budgets); reserving the worst case is what makes a
budget exact: no request settles above its reservation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from polyroute.core.errors import BudgetExceededError, InvalidRequestError
from polyroute.core.pricing import Cost
from polyroute.router.policy import RoutingPolicy
from polyroute.router.state import BudgetDenied, BudgetLimit, Reservation, RoutingState

DEFAULT_MAX_TOKENS = 4096
"""The answer assumed, for its worst case, when a request sets no ``max_tokens``."""
DEFAULT_HOLD_S = 900.0
"""How long a reservation counts when it is never settled (its process died)."""


@dataclass(frozen=True, slots=True)
class BudgetPlan:
    """The budgets one request is held to: scope (``key:<name>``, ``team:<name>``) ->
    limit; ``default_max_tokens``, the answer assumed when the request sets no
    ``max_tokens``; ``hold_s``, how long its reservation lasts if never settled."""

    limits: Mapping[str, BudgetLimit]
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    hold_s: float = DEFAULT_HOLD_S


def cost_ceiling(
    policy: RoutingPolicy, chain: Sequence[str], input_tokens: int, output_tokens: int
) -> float:
    """The most a request may cost: ``input_tokens`` at the dearest input-side price
    (input or cache write) and ``output_tokens`` at the dearest output-side price
    (output or reasoning), over every entry that serves a model of ``chain``. Raises
    :class:`InvalidRequestError` naming an entry and model without a known price: such
    a request cannot be held to a budget."""
    # The dearest prices of a chain, once per policy (a config's entries) and hour (the
    # catalogue's prices may change with the date): every budgeted request asks.
    kept = _DEAREST.get(id(policy))
    if kept is None or kept[0] is not policy:
        if len(_DEAREST) >= 64:
            _DEAREST.clear()  # bounded: each reload makes a new policy
        kept = _DEAREST[id(policy)] = (policy, {})
    known = kept[1]
    key = (tuple(chain), int(time.time() // 3600))
    dearest = known.get(key)
    if dearest is None:
        if len(known) >= 1024:
            known.clear()  # bounded: callers choose the names
        dearest = known[key] = _dearest_prices(policy, chain)
    return (input_tokens * dearest[0] + output_tokens * dearest[1]) / 1_000_000


_DEAREST: dict[int, tuple[RoutingPolicy, dict[tuple[Any, ...], tuple[float, float]]]] = {}
"""id(policy) -> (the policy, its chains' dearest prices); by id and identity, not a weak
dictionary: that makes a weak reference at every look-up."""


def _dearest_prices(policy: RoutingPolicy, chain: Iterable[str]) -> tuple[float, float]:
    dearest_in = dearest_out = 0.0
    for model in chain:
        for entry, upstream_model in policy.serving(model):
            price = entry.price_for(upstream_model)
            if price is None:
                raise InvalidRequestError(
                    f"model {upstream_model!r} on entry {entry.name!r} has no known price, "
                    "so a request under a budget cannot use it (give the entry a price:)"
                )
            for tier in (price, *(tier for _, tier in price.tiers)):
                write = tier.cache_write if tier.cache_write is not None else tier.input
                reasoning = tier.reasoning if tier.reasoning is not None else tier.output
                dearest_in = max(dearest_in, tier.input, write)
                dearest_out = max(dearest_out, tier.output, reasoning)
    return dearest_in, dearest_out


class BudgetKeeper:
    """A router's reservations: taken before a request's first attempt, settled without
    waiting (so that a request whose consumer left still settles; the state's own close
    sends what is still queued)."""

    def __init__(self, state: RoutingState) -> None:
        self._state = state

    async def reserve(self, plan: BudgetPlan, amount_usd: float) -> Reservation:
        """Hold ``amount_usd`` on every budget of ``plan``; raises
        :class:`BudgetExceededError` for the first without room."""
        held = await self._state.reserve(plan.limits, amount_usd, plan.hold_s)
        return _allowed(held, amount_usd)

    def reserve_at_once(self, plan: BudgetPlan, amount_usd: float) -> Reservation | None:
        """:meth:`reserve` when the state decides it without waiting; ``None`` when it
        must ask its shared store (await :meth:`reserve` then)."""
        held = self._state.reserve_at_once(plan.limits, amount_usd, plan.hold_s)
        return None if held is None else _allowed(held, amount_usd)

    def settle(self, reservation: Reservation, cost: Cost) -> None:
        """Count what the request cost (its reservation, when it is unpriced)."""
        usd = reservation.amount_usd if cost.usd is None else cost.usd
        self._state.settle_soon(reservation, usd)


def _allowed(held: Reservation | BudgetDenied, amount_usd: float) -> Reservation:
    if isinstance(held, BudgetDenied):
        raise BudgetExceededError(held.scope, held.remaining_usd, amount_usd)
    return held


def remaining_usd(reservation: Reservation) -> float:
    """What is left, with this request's reservation counted, on its tightest budget."""
    return min(reservation.remaining_usd.values(), default=math.inf)
