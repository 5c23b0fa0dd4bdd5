"""What one routed request needs of its router, handed over frozen.

A :class:`RouterStream` gets a :class:`RouteContext` rather than the router itself,
so the stream module does not import the router module (no cycle), and what a
request may touch of the router's state is written down here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeAlias

from polyroute.core.attempts import Attempt
from polyroute.core.pricing import Cost, attempt_cost
from polyroute.router.config import RouteSettings, ToolCallMode
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

    def tool_call_mode(self, candidate: Candidate) -> ToolCallMode:
        """The entry's ``tool_calls`` mode, else the route's."""
        return candidate.entry.tool_calls or self.settings.tool_calls

    def cost_of(self, attempts: Iterable[Attempt], estimate_input: Callable[[], int]) -> Cost:
        """What ``attempts`` cost together, each at its own entry's price for its model
        (see polyroute.core.pricing; ``estimate_input``: the prompt's tokens, asked
        only for an attempt cut before its upstream counted them)."""
        entries = self.policy.by_name
        costs = (
            attempt_cost(
                attempt, entries[attempt.provider].price_for(attempt.model), estimate_input
            )
            for attempt in attempts
        )
        return Cost.of_attempts(cost for cost in costs if cost is not None)
