"""Consumers that stop early: the upstream sees its connection closed within 1 s
(measured on the server side), and nothing is left running or unclosed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from polyroute import Router
from tests.router.helpers import HI
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script, ScriptedUpstream
from tests.upstreams.server import wait_closed

CLOSE_WITHIN = 1.0


@pytest.fixture(params=["darkai", "openai"])
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[ScriptedUpstream]:
    server: ScriptedUpstream = DarkAIUpstream() if request.param == "darkai" else OpenAIUpstream()
    await server.start()
    yield server
    await server.stop()


def router_for(server: ScriptedUpstream) -> Router:
    wire = "darkai" if isinstance(server, DarkAIUpstream) else "openai"
    return Router.from_config(
        {
            "providers": [
                {
                    "name": "up",
                    "type": wire,
                    "api_endpoint": server.url,
                    "working": True,
                    "models": ["gpt-4o"],
                }
            ]
        }
    )


async def test_break_after_the_first_chunk(upstream: ScriptedUpstream) -> None:
    upstream.default = Script(chunks=["one", "two"], stall_after=1)
    with capture_logs() as logs:
        async with router_for(upstream) as router:
            async for _text in router.stream("gpt-4o", HI):
                break
            await wait_closed(upstream.requests[0], within=CLOSE_WITHIN)
    assert upstream.requests[0].completed is False
    assert [log["event"] for log in logs][-1] == "route.cancelled"


async def test_break_inside_async_with_is_cancelled_at_once(upstream: ScriptedUpstream) -> None:
    upstream.default = Script(chunks=["one", "two"], stall_after=1)
    async with router_for(upstream) as router:
        async with router.stream("gpt-4o", HI) as stream:
            async for _text in stream:
                break
        # No event-loop turn in between: leaving `async with` closed the stream.
        assert stream.status == "cancelled"
        assert [a.outcome for a in stream.attempts] == ["cancelled"]
        await wait_closed(upstream.requests[0], within=CLOSE_WITHIN)
    assert upstream.requests[0].completed is False


async def test_deltas_break_inside_async_with_closes_the_upstream(
    upstream: ScriptedUpstream,
) -> None:
    upstream.default = Script(chunks=["one", "two"], stall_after=1)
    async with router_for(upstream) as router:
        async with router.stream("gpt-4o", HI) as stream:
            async for _delta in stream.deltas():
                break
        assert stream.status == "cancelled"
        await wait_closed(upstream.requests[0], within=CLOSE_WITHIN)


async def test_cancelled_while_waiting_for_the_first_chunk(upstream: ScriptedUpstream) -> None:
    upstream.default = Script(chunks=[], stall_after=0)
    async with router_for(upstream) as router:

        async def consume() -> str:
            return "".join([text async for text in router.stream("gpt-4o", HI)])

        task = asyncio.create_task(consume())
        await upstream.request_seen.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_closed(upstream.requests[0], within=CLOSE_WITHIN)


async def test_asyncio_timeout_around_the_consumer(upstream: ScriptedUpstream) -> None:
    upstream.default = Script(chunks=["one", "two"], stall_after=1)
    received: list[str] = []
    async with router_for(upstream) as router:

        async def consume_for_a_while() -> None:
            async with asyncio.timeout(0.3):
                async for text in router.stream("gpt-4o", HI):
                    received.append(text)

        with pytest.raises(TimeoutError):
            await consume_for_a_while()
        await wait_closed(upstream.requests[0], within=CLOSE_WITHIN)
    assert received == ["one"]


async def test_nothing_is_left_running_after_cancellations(upstream: ScriptedUpstream) -> None:
    upstream.default = Script(chunks=["one", "two"], stall_after=1)
    async with router_for(upstream) as router:
        streams = [router.stream("gpt-4o", HI) for _ in range(20)]
        for stream in streams:
            assert await anext(stream) == "one"
        for stream in streams:
            await stream.aclose()
        for request in upstream.requests:
            await wait_closed(request, within=CLOSE_WITHIN)
        connector = router.providers[0]._sessions.session.connector
        assert connector is not None
        assert len(connector._acquired) == 0  # type: ignore[attr-defined]
    current = asyncio.current_task()
    assert [task for task in asyncio.all_tasks() if task is not current] == []
