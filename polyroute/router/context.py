"""What one routed request needs of its router, handed over frozen.

A :class:`RouterStream` gets a :class:`RouteContext` rather than the router itself,
so the stream module does not import the router module (no cycle), and what a
request may touch of the router's state is written down here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeAlias

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
