"""1,000 streams through the gateway, 100 at a time, four in ten dropped by their
client after the first chunk: afterwards no upstream request is still open, no
upstream connection is held, and no task is left (the gateway runs in-process here,
so that its tasks and pools can be inspected)."""

from __future__ import annotations

import asyncio
import random

import aiohttp
from aiohttp import web

from polyroute import Router
from polyroute.server import Gateway
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script
from tests.upstreams.server import wait_closed

STREAMS = 1000
AT_ONCE = 100
HI = [{"role": "user", "content": "Hi"}]


async def test_a_thousand_streams_many_dropped_leave_nothing_open(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.default = Script(chunks=["a"] * 20, delay=0.001)
    entry = {"name": "up", "type": "openai", "base_url": openai_upstream.base_url, "models": ["m"]}
    router = Router.from_config({"providers": [entry]})
    runner = web.AppRunner(Gateway(router).app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
    picker = random.Random(7)
    gate = asyncio.Semaphore(AT_ONCE)
    outcomes = {"complete": 0, "dropped": 0}

    async def one(session: aiohttp.ClientSession) -> None:
        drop = picker.random() < 0.4
        async with (
            gate,
            session.post(url, json={"model": "m", "messages": HI, "stream": True}) as r,
        ):
            if drop:
                # The first text chunk, as the upstream wrote it (relayed as it came).
                await r.content.readuntil(b'"a"}')
                r.close()
                outcomes["dropped"] += 1
            else:
                assert (await r.read()).endswith(b"data: [DONE]\n\n")
                outcomes["complete"] += 1

    async with router, aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session) for _ in range(STREAMS)))
        for record in openai_upstream.requests:
            await wait_closed(record, within=5)
        held = len(router.providers[0]._sessions.session.connector._acquired)  # type: ignore[attr-defined]
    await runner.cleanup()
    assert outcomes["complete"] + outcomes["dropped"] == STREAMS
    assert outcomes["dropped"] > 300
    assert len(openai_upstream.requests) == STREAMS
    assert sum(not record.completed for record in openai_upstream.requests) > 300
    assert held == 0
    current = asyncio.current_task()
    assert [task for task in asyncio.all_tasks() if task is not current] == []
