from __future__ import annotations

import asyncio
import compileall
import faulthandler
import gc
import io
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import settings

from polyroute import configure_logging
from polyroute.core.logging import LOGGER_NAME
from tests.redis_server import RedisServer
from tests.store.postgres_server import PostgresServer
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


def _bytecode_for_subprocesses() -> None:
    """With PYTHONDONTWRITEBYTECODE set (as on the project's machines), every process a
    test starts (polyroute serve, the CLI, the test upstreams) compiles polyroute's
    sources anew: about 0.25 s a process, half a minute over the suite. They are
    compiled once here, into the ``__pycache__`` directories Python reads (ignored by
    git). (Not PYTHONPYCACHEPREFIX: a process given one looks for the standard
    library's and the dependencies' bytecode there too, and compiles them all.)"""
    if not sys.dont_write_bytecode:
        return  # the processes write and read it themselves
    root = Path(__file__).resolve().parent.parent
    for package in ("polyroute", "tests", "benchmarks"):
        compileall.compile_dir(root / package, quiet=1)


_bytecode_for_subprocesses()

LOOP_ERRORS: list[dict[str, Any]] = []
HANG_SECONDS = 120.0
"""A test still running after this long is stuck: its tasks are printed and cancelled."""
LOOPS: list[asyncio.AbstractEventLoop] = []


class StrictLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """Every test loop records what asyncio would only log: exceptions nobody retrieved,
    tasks destroyed while pending, errors in callbacks. Such an error fails the test."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        loop.set_exception_handler(lambda _loop, context: LOOP_ERRORS.append(context))
        LOOPS[:] = [loop]
        return loop


def _unstick(test: str) -> None:
    """From the watchdog thread: show where every task of the test's loop waits (a
    thread dump would only show the loop idle in select), then cancel them."""
    faulthandler.dump_traceback(file=sys.__stderr__)
    loop = LOOPS[0] if LOOPS else None
    if loop is None or not loop.is_running():
        return

    def dump_and_cancel() -> None:
        print(f"\n{test} is stuck after {HANG_SECONDS} s; its tasks:", file=sys.__stderr__)
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=sys.__stderr__)
            task.cancel()

    loop.call_soon_threadsafe(dump_and_cancel)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    watchdog = threading.Timer(HANG_SECONDS, _unstick, args=(item.nodeid,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()


asyncio.set_event_loop_policy(StrictLoopPolicy())


def _loop_errors() -> str:
    errors, LOOP_ERRORS[:] = list(LOOP_ERRORS), []
    return "; ".join(_described(error) for error in errors)


def _described(error: dict[str, Any]) -> str:
    """A loop error's message, with the exception and the task or future it came from
    (a task collected long after it failed says little else of where it was made)."""
    parts = [str(error.get("message") or error)]
    if (exception := error.get("exception")) is not None:
        parts.append(f"{type(exception).__name__}: {exception}")
    if (task := error.get("task") or error.get("future")) is not None:
        parts.append(repr(task))
    return " | ".join(parts)


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


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the gateway's and the CLI's store tests, started on
    first use (an initdb is about a second); a test that stops it starts it again.
    tests/store keep their own: they stop theirs mid-load."""
    server = PostgresServer().init().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.cli("FLUSHALL")
    return redis_server.url
