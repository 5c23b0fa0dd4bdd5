"""An upstream that sends far more than the consumer reads, then closes: memory stays
bounded (flow control holds the upstream back) and no text is lost."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest
from aiohttp import web

from polyroute import Router
from tests.router.helpers import HI
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script
from tests.upstreams.server import LocalServer, RecordedRequest

CHUNK = "x" * 4096
CHUNKS = 8192  # 32 MiB of text
MEMORY_BOUND = 4 * 1024 * 1024


class Flood(LocalServer):
    """Writes CHUNKS chunks as fast as the socket takes them, then closes."""

    def __init__(self, wire: str) -> None:
        self.encoder = DarkAIUpstream() if wire == "darkai" else OpenAIUpstream()
        super().__init__(self._flood, self.encoder.path)
        self.written = 0
        self.blocked = asyncio.Event()
        """Set once a write could not reach the socket: the client stopped reading."""

    async def _flood(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        script = Script()
        for index in range(CHUNKS):
            piece = self.encoder.encode_chunk(index, CHUNK, script, record.body)
            await response.write(piece)
            self.written += len(piece)
            transport = request.transport
            if transport is not None and transport.get_write_buffer_size() > 0:
                self.blocked.set()
        await response.write(self.encoder.encode_end(script, record.body))
        await response.write_eof()
        return response


@pytest.mark.parametrize("wire", ["darkai", "openai"])
async def test_slow_consumer_keeps_memory_bounded_and_loses_nothing(wire: str) -> None:
    server = await Flood(wire).start()
    entry = {"name": "flood", "type": wire, "api_endpoint": server.url, "working": True}
    if wire == "openai":
        entry = {**entry, "models": []}
    tracemalloc.start()
    try:
        async with Router.from_config({"providers": [entry]}) as router:
            stream = router.stream("gpt-4o", HI)
            first = await anext(stream)
            baseline, _ = tracemalloc.get_traced_memory()
            await asyncio.wait_for(server.blocked.wait(), 30)  # the consumer is "slow": it waits
            held, _ = tracemalloc.get_traced_memory()
            assert held - baseline < MEMORY_BOUND
            assert server.written < CHUNKS * len(CHUNK) // 4  # the upstream was held back
            rest = [text async for text in stream]
    finally:
        tracemalloc.stop()
        await server.stop()
    assert len(first) + sum(map(len, rest)) == CHUNKS * len(CHUNK)
    assert server.requests[0].completed
