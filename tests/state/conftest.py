"""Fixtures of the routing-state tests: Redis states started and closed for a test, and
a redis-server of the test's own (to stop or restart)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest

from polyroute.router.state import RoutingState
from polyroute.router.state.redis import RedisState
from tests.redis_server import RedisServer
from tests.state.helpers import make_state


@pytest.fixture
async def redis_states(redis_url: str) -> AsyncIterator[Any]:
    """``build(url=..., **keys)``: a started :class:`RedisState`, closed after the test."""
    made: list[RoutingState] = []

    async def build(url: str = redis_url, **keys: Any) -> RedisState:
        state = make_state("redis", url, **keys)
        await state.start()
        made.append(state)
        return cast(RedisState, state)

    yield build
    for state in made:
        await state.aclose()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone."""
    server = RedisServer()
    yield server
    server.close()
