"""Start `polyroute serve` as users do: a subprocess on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.openai import OpenAIUpstream


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Process:
    url: str
    process: asyncio.subprocess.Process
    stderr: list[str] = field(default_factory=list)
    """What the gateway printed on stderr after it listened, line by line as it comes
    (all of it once it stopped)."""
    code: int | None = None

    async def said(self, text: str, within: float = 10.0, *, after: int = 0) -> int:
        """Wait until a line of stderr from the ``after``-th on holds ``text``; the
        number of lines up to and including it (the next call's ``after``)."""

        async def line() -> int | None:
            for index in range(after, len(self.stderr)):
                if text in self.stderr[index]:
                    return index + 1
            return None

        found, _ = await eventually(line, within)
        return found


@asynccontextmanager
async def gateway(
    config: Path | None, *args: str, env: dict[str, str] | None = None, files: int | None = None
) -> AsyncIterator[Process]:
    """The gateway serving ``config`` (``None``: the built-in default); yields once it
    says it listens, then stops it with SIGTERM and checks it exits 0. ``files``: its
    limit on open files (``RLIMIT_NOFILE``, soft and hard), else the test's."""

    def limit_files() -> None:
        if files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k != "POLYROUTE_CONFIG"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "polyroute",
        "serve",
        *(["-c", str(config)] if config else []),
        "--port",
        str(port),
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**environment, **(env or {})},
        preexec_fn=limit_files if files is not None else None,
    )
    assert process.stderr is not None
    served = Process(f"http://127.0.0.1:{port}", process)
    reading: asyncio.Task[None] | None = None
    try:
        while b"polyroute: serving on" not in (
            line := await asyncio.wait_for(process.stderr.readline(), 30)
        ):
            assert line, "polyroute serve exited before it listened"
        # Read on while it serves: a verbose gateway under load fills a pipe nobody
        # reads (64 KiB), and then waits to write its next log line, forever.
        reading = asyncio.create_task(_read_lines(process.stderr, served.stderr))
        yield served
    finally:
        if process.returncode is None:
            send_signal(process, signal.SIGTERM)
        if reading is not None:
            await asyncio.wait_for(reading, 30)
        else:
            served.stderr = (
                (await asyncio.wait_for(process.stderr.read(), 30)).decode().splitlines()
            )
        served.code = await asyncio.wait_for(process.wait(), 30)


def send_signal(process: asyncio.subprocess.Process, signum: int) -> None:
    """Send ``signum`` to ``process`` unless it is gone. ``os.kill``, not
    ``process.send_signal``: that polls first, and a poll that reaps a child which has
    just exited, before asyncio's watcher does, makes asyncio report 255 ("Unknown child
    process pid") whatever the child exited with."""
    with contextlib.suppress(ProcessLookupError):  # reaped, not yet reported
        os.kill(process.pid, signum)


async def _read_lines(stream: asyncio.StreamReader, lines: list[str]) -> None:
    """Append each whole line of ``stream`` to ``lines`` as it comes (any length)."""
    pending = b""
    while chunk := await stream.read(65536):
        *complete, pending = (pending + chunk).split(b"\n")
        lines.extend(line.decode(errors="replace") for line in complete)
    if pending:
        lines.append(pending.decode(errors="replace"))


@dataclass
class Upstreams:
    """Two OpenAI-format upstreams serving ``m`` (and ``atomic``), then an
    Anthropic-format one serving ``claude-local-large``: the dialect tests' stage."""

    openai: OpenAIUpstream
    backup: OpenAIUpstream
    claude: AnthropicUpstream

    def entries(self) -> list[dict[str, Any]]:
        def entry(name: str, kind: str, base_url: str, models: list[str]) -> dict[str, Any]:
            return {"name": name, "type": kind, "base_url": base_url, "models": models}

        return [
            entry("up", "openai", self.openai.base_url, ["m", "atomic"]),
            entry("backup", "openai", self.backup.base_url, ["m", "atomic"]),
            entry("claude", "anthropic", self.claude.base_url, ["claude-local-large"]),
        ]

    def reset(self) -> None:
        """Healthy answers, nothing queued, nothing recorded."""
        for server in (self.openai, self.backup, self.claude):
            server.reset()


@asynccontextmanager
async def dialect_gateway(folder: Path, **settings: Any) -> AsyncIterator[tuple[str, Upstreams]]:
    """A gateway (its URL) in front of fresh :class:`Upstreams`, with ``settings`` and one
    attempt per entry; checks it exits 0."""
    upstreams = Upstreams(
        await OpenAIUpstream(models=["m", "atomic"]).start(),
        await OpenAIUpstream(models=["m", "atomic"]).start(),
        await AnthropicUpstream().start(),
    )
    config = folder / "gateway.yaml"
    data = {"providers": upstreams.entries(), "retry": {"attempts": 1}, **settings}
    config.write_text(yaml.safe_dump(data))
    try:
        async with gateway(config) as process:
            yield process.url, upstreams
    finally:
        for server in (upstreams.openai, upstreams.backup, upstreams.claude):
            await server.stop()
    assert process.code == 0


ADMIN_KEY = "pr-admin-test-0123456789abcdef"
"""The admin key of the governance tests' gateways (``gateway.admin_key_env: ADMIN_KEY``)."""
T = TypeVar("T")


async def admin(
    session: aiohttp.ClientSession,
    url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = ADMIN_KEY,
) -> tuple[int, Any]:
    """One admin API call: its status and decoded body (``None`` when not JSON)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, bytes) else None
    json_body = None if isinstance(body, bytes) else body
    async with session.request(
        method, f"{url}{path}", json=json_body, data=data, headers=headers
    ) as answer:
        text = await answer.text()
    try:
        return answer.status, json.loads(text)
    except ValueError:
        return answer.status, None


async def eventually(
    check: Callable[[], Awaitable[T | None]], within: float, every: float = 0.02
) -> tuple[T, float]:
    """Poll ``check`` until it returns something other than ``None`` (or ``False``);
    that value and the seconds it took. Fails past ``within`` seconds."""
    started = time.perf_counter()
    while True:
        value = await check()
        elapsed = time.perf_counter() - started
        if value is not None and value is not False:
            return value, elapsed
        if elapsed > within:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(every)  # between polls only: the deadline decides
