"""What one routed request needs of its router, handed over frozen.

A :class:`RouterStream` gets a :class:`RouteContext` rather than the router itself,
so the stream module does not import the router module (no cycle), and what a
request may touch of the router's state is written down here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeAlias

from polyroute.core.attempts import Attempt
from polyroute.core.pricing import Cost, attempt_cost
from polyroute.router.budget import BudgetKeeper
from polyroute.router.config import RouteSettings, ToolCallMode
from polyroute.router.observe import RequestObserver
from polyroute.router.policy import Candidate, RoutingPolicy
from polyroute.router.retry import RetryPolicy
from polyroute.router.state import RoutingState

Mode: TypeAlias = Literal["fresh", "continue", "restart"]
"""How a candidate is asked: for a whole answer, to continue the delivered text, or
for a whole answer that replaces it."""


class Choice(NamedTuple):
    """A candidate to try, and how. (A tuple: one is made per attempt.)"""

    candidate: Candidate
    mode: Mode

    @property
    def name(self) -> str:
        return self.candidate.name


@dataclass(frozen=True, slots=True)
class RouteContext:
    """The shared parts of a router (policy, retries, state: circuits, limits, budget,
    statistics) and the route settings of one model: made once per model and shared
    by its requests."""

    policy: RoutingPolicy
    retry: RetryPolicy
    state: RoutingState
    cooldown_seconds: float
    settings: RouteSettings
    budgets: BudgetKeeper
    observers: Sequence[RequestObserver] = ()
    """Told of each request when it ends (the router's list: one added later counts)."""

    def tool_call_mode(self, candidate: Candidate) -> ToolCallMode:
        """The entry's ``tool_calls`` mode, else the route's."""
        return candidate.entry.tool_calls or self.settings.tool_calls

    def cost_of(self, attempts: Iterable[Attempt], estimate_input: Callable[[], int]) -> Cost:
        """What ``attempts`` cost together (see :meth:`attempt_costs`)."""
        costs = self.attempt_costs(attempts, estimate_input)
        return Cost.of_attempts(cost for cost in costs if cost is not None)

    def attempt_costs(
        self, attempts: Iterable[Attempt], estimate_input: Callable[[], int]
    ) -> list[Cost | None]:
        """Each attempt's cost at its own entry's price for its model, ``None`` for one
        that produced nothing (see polyroute.core.pricing; ``estimate_input``: the
        prompt's tokens, asked only for an attempt cut before its upstream counted)."""
        entries = self.policy.by_name
        return [
            attempt_cost(a, entries[a.provider].price_for(a.model), estimate_input)
            for a in attempts
        ]
