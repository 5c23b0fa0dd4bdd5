"""A lone surrogate in a message or an option fails at ``router.stream(...)``, as a
malformed role does: before any upstream is asked, with the field named."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from polyroute import InvalidMessagesError, InvalidRequestError
from tests.router.helpers import entry, router_for
from tests.upstreams.darkai import DarkAIUpstream

Start = Callable[[], Awaitable[DarkAIUpstream]]


async def test_a_lone_surrogate_fails_at_the_call_and_nothing_is_sent(start_darkai: Start) -> None:
    server = await start_darkai()
    async with router_for(entry("dark", server)) as router:
        with pytest.raises(InvalidMessagesError, match=r"message 0\.content: '\\ud800'"):
            router.stream("gpt-4o", [{"role": "user", "content": "\ud800"}])
        with pytest.raises(InvalidRequestError, match=r"stop\.0: '\\udc80'"):
            router.stream("gpt-4o", [{"role": "user", "content": "Hi"}], stop=["\udc80"])
        with pytest.raises(InvalidMessagesError, match=r"message 0\.role"):
            router.stream("gpt-4o", [{"role": "\ud800", "content": "Hi"}])
    assert server.requests == []
