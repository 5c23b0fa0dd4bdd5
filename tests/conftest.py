from __future__ import annotations

import asyncio
import gc
import io
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import structlog
from hypothesis import settings

from polyroute import configure_logging
from polyroute.core.logging import LOGGER_NAME
from tests.redis_server import RedisServer
from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.gemini import GeminiUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.proxy import RecordingProxy

# Property tests: a short budget by default (CI), a long one on demand (docs/reliability.md):
#   HYPOTHESIS_PROFILE=fuzz .venv/bin/python -m pytest tests/reliability/test_fuzz.py
settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("fuzz", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

LOOP_ERRORS: list[dict[str, Any]] = []


class StrictLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """Every test loop records what asyncio would only log: exceptions nobody retrieved,
    tasks destroyed while pending, errors in callbacks. Such an error fails the test."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        loop.set_exception_handler(lambda _loop, context: LOOP_ERRORS.append(context))
        return loop


asyncio.set_event_loop_policy(StrictLoopPolicy())


def _loop_errors() -> str:
    errors, LOOP_ERRORS[:] = list(LOOP_ERRORS), []
    return "; ".join(str(error.get("message") or error) for error in errors)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield
    # A task destroyed while pending is only reported when collected. What a test made
    # is young: collecting generations 0 and 1 finds it at a fraction of a full
    # collection's cost (about 0.1 s here, with pydantic and hypothesis loaded).
    gc.collect(1)
    if errors := _loop_errors():
        pytest.fail(f"unhandled errors in the event loop: {errors}", pytrace=False)


def pytest_sessionfinish(session: pytest.Session) -> None:
    gc.collect()
    if errors := _loop_errors():
        print(f"\nunhandled errors in the event loop, found at the end: {errors}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """polyroute's events as configured by an application: JSON lines, debug level, into
    the returned buffer. The library's silent default is restored afterwards."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream, level=logging.DEBUG)
    yield stream
    restore_silent_logging()


def restore_silent_logging() -> None:
    """Undo configure_logging: the library's silent default again."""
    structlog.reset_defaults()
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if not isinstance(handler, logging.NullHandler):
            logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


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
async def anthropic_upstream() -> AsyncIterator[AnthropicUpstream]:
    """An Anthropic Messages-format server on 127.0.0.1, healthy unless scripted."""
    server = await AnthropicUpstream().start()
    yield server
    await server.stop()


@pytest.fixture
async def gemini_upstream() -> AsyncIterator[GeminiUpstream]:
    """A Gemini API-format server on 127.0.0.1, healthy unless scripted."""
    server = await GeminiUpstream().start()
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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session; each test gets it empty (``redis_url``)."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.cli("FLUSHALL")
    return redis_server.url
