"""Timeouts, cancellation and concurrency through the router."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from structlog.testing import capture_logs

from polyroute import UpstreamTimeout
from tests.router.helpers import HI, FakeSleep, collect, entry, router_for
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.scripted import Script
from tests.upstreams.server import wait_closed

Start = Callable[[], Awaitable[DarkAIUpstream]]


async def test_first_chunk_timeout_falls_back_before_any_text(start_darkai: Start) -> None:
    slow, fast = await start_darkai(), await start_darkai()
    slow.default = Script(chunks=[], stall_after=0)
    config = [entry("slow", slow, timeouts={"first_chunk": 0.2}), entry("fast", fast)]
    async with router_for(*config, retry={"attempts": 1}) as router:
        text, stream = await collect(router)
    assert text == "Hello, world!"
    assert isinstance(stream.attempts[0].error, UpstreamTimeout)
    await wait_closed(slow.requests[0])


async def test_idle_timeout_after_text_raises(start_darkai: Start) -> None:
    server = await start_darkai()
    server.default = Script(chunks=["a", "b"], stall_after=1)
    async with router_for(entry("dark", server), timeouts={"idle": 0.2}) as router:
        stream = router.stream("gpt-4o", HI)
        assert await anext(stream) == "a"
        with pytest.raises(UpstreamTimeout):
            await anext(stream)
    assert stream.text == "a"


async def test_break_closes_the_upstream_connection(start_darkai: Start) -> None:
    server = await start_darkai()
    server.default = Script(chunks=["one", "two"], stall_after=1)
    with capture_logs() as logs:
        async with router_for(entry("dark", server)) as router:
            stream = router.stream("gpt-4o", HI)
            async for text in stream:
                assert text == "one"
                break
            await wait_closed(server.requests[0])
    assert server.requests[0].completed is False
    assert stream.attempts[0].outcome == "cancelled"
    assert "route.cancelled" in [log["event"] for log in logs]


async def test_aclose_closes_the_upstream_connection(start_darkai: Start) -> None:
    server = await start_darkai()
    server.default = Script(chunks=["one", "two"], stall_after=1)
    async with router_for(entry("dark", server)) as router:
        stream = router.stream("gpt-4o", HI)
        assert await anext(stream) == "one"
        await stream.aclose()
        await wait_closed(server.requests[0])
        await stream.aclose()


async def test_cancelling_while_waiting_for_the_first_chunk_closes_the_upstream(
    start_darkai: Start,
) -> None:
    server = await start_darkai()
    server.default = Script(stall_before_headers=True)
    with capture_logs() as logs:
        async with router_for(entry("dark", server)) as router:
            task = asyncio.create_task(collect(router))
            await server.request_seen.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_closed(server.requests[0])
    assert "route.cancelled" in [log["event"] for log in logs]


async def test_cancelling_during_a_retry_wait_stops_the_request(start_darkai: Start) -> None:
    server = await start_darkai()
    server.default = Script(status=503)
    waiting = asyncio.Event()

    async def blocking_sleep(delay: float) -> None:
        waiting.set()
        await asyncio.Event().wait()

    async with router_for(entry("dark", server), sleep=FakeSleep()) as router:
        router.retry._sleep = blocking_sleep
        task = asyncio.create_task(collect(router))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(server.requests) == 1


async def test_a_stream_is_iterated_only_once(start_darkai: Start) -> None:
    server = await start_darkai()
    async with router_for(entry("dark", server)) as router:
        stream = router.stream("gpt-4o", HI)
        assert "".join([t async for t in stream]) == "Hello, world!"
        with pytest.raises(RuntimeError, match="only once"):
            stream.__aiter__()


async def test_200_concurrent_streams_share_one_pool_and_all_complete(start_darkai: Start) -> None:
    a, b = await start_darkai(), await start_darkai()
    a.default = Script(chunks=["x"] * 20)
    async with router_for(entry("a", a), entry("b", b)) as router:
        results = await asyncio.gather(*(collect(router) for _ in range(200)))
        provider = router.providers[0]
        sessions = {id(provider._sessions.session)}
    assert all(text == "x" * 20 for text, _ in results)
    assert {stream.provider for _, stream in results} == {"a"}
    assert len(a.requests) == 200
    assert len(sessions) == 1
