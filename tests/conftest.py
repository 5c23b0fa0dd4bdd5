from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.proxy import RecordingProxy


@pytest.fixture
async def darkai_upstream() -> AsyncIterator[DarkAIUpstream]:
    """A DarkAI-format server on 127.0.0.1, healthy unless a test scripts it."""
    server = await DarkAIUpstream().start()
    yield server
    await server.stop()


@pytest.fixture
async def openai_upstream() -> AsyncIterator[OpenAIUpstream]:
    """An OpenAI-format server on 127.0.0.1, healthy unless a test scripts it."""
    server = await OpenAIUpstream().start()
    yield server
    await server.stop()


@pytest.fixture
async def recording_proxy() -> AsyncIterator[RecordingProxy]:
    proxy = await RecordingProxy().start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def start_darkai() -> AsyncIterator[Callable[[], Awaitable[DarkAIUpstream]]]:
    """Factory: start as many DarkAI-format servers as a test needs (each on its own port)."""
    servers: list[DarkAIUpstream] = []

    async def start() -> DarkAIUpstream:
        server = await DarkAIUpstream().start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
