from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from polyroute import Tracing
from tests.telemetry.receiver import OTLPReceiver
from tests.upstreams.openai import OpenAIUpstream


@pytest.fixture
async def receiver() -> AsyncIterator[OTLPReceiver]:
    """A real OTLP/HTTP receiver on 127.0.0.1."""
    server = await OTLPReceiver().start()
    yield server
    await server.stop()


@pytest.fixture
async def tracing(receiver: OTLPReceiver) -> AsyncIterator[Callable[..., Tracing]]:
    """Factory: a :class:`Tracing` exporting to ``receiver`` (settings may be added),
    shut down at the end of the test."""
    made: list[Tracing] = []

    def make(**settings: Any) -> Tracing:
        made.append(Tracing({"otlp_endpoint": receiver.url, **settings}))
        return made[-1]

    yield make
    for each in made:
        await each.aclose()


@pytest.fixture
async def start_openai() -> AsyncIterator[Callable[[], Awaitable[OpenAIUpstream]]]:
    """Factory: as many OpenAI-format servers on 127.0.0.1 as a test needs."""
    servers: list[OpenAIUpstream] = []

    async def start() -> OpenAIUpstream:
        servers.append(await OpenAIUpstream(models=["m"]).start())
        return servers[-1]

    yield start
    for server in servers:
        await server.stop()
