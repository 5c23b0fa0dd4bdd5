"""What the gateway's runtime keys ask of the routing state: tokens per minute of a key
(counted across processes with Redis) and announcements (a key changed somewhere)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from polyroute.router.state import Denied, Lease, RoutingState
from tests.state.helpers import make_state, until

Make = Callable[[], Awaitable[RoutingState]]


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    made: list[RoutingState] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    async def build() -> RoutingState:
        state = make_state(request.param, url)
        await state.start()
        made.append(state)
        return state

    yield build
    for state in made:
        await state.aclose()


async def test_a_key_is_refused_once_its_minute_holds_its_tpm(make: Make) -> None:
    one = await make()
    first = await one.admit_key_tokens("key:k", 100, 1)
    assert isinstance(first, Lease)
    first.end(80)  # what the request used replaces the estimate
    second = await one.admit_key_tokens("key:k", 100, 1)
    assert isinstance(second, Lease)
    second.end(80)
    await one.sync()  # Redis: the correction is a write nobody waits for
    refused = await one.admit_key_tokens("key:k", 100, 1)
    assert isinstance(refused, Denied)
    assert "tpm limit 100" in refused.reason
    assert 0 < refused.retry_in <= 60
    assert isinstance(await one.admit_key_tokens("key:other", 100, 1), Lease)


async def test_an_announcement_reaches_the_listeners_of_every_process(make: Make) -> None:
    one, two = await make(), await make()
    heard: list[str] = []
    shared = two.listen("keys", lambda: heard.append("two"))
    one.listen("keys", lambda: heard.append("one"))
    await one.announce("keys")
    if shared:  # Redis: the other process too
        await until(lambda: "two" in heard)
    else:  # memory: one process only
        assert heard == ["one"]
    await until(lambda: "one" in heard)  # its own too (Redis: through the channel)
    await one.announce("other")
    await one.sync()
    assert heard.count("one") == 1
