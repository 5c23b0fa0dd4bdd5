"""Start `polyroute serve` as users do: a subprocess on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Process:
    url: str
    process: asyncio.subprocess.Process
    stderr: list[str] = field(default_factory=list)
    """What the gateway printed on stderr after it listened (read when it stopped)."""
    code: int | None = None


@asynccontextmanager
async def gateway(
    config: Path | None, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[Process]:
    """The gateway serving ``config`` (``None``: the built-in default); yields once it
    says it listens, then stops it with SIGTERM and checks it exits 0."""
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
    )
    assert process.stderr is not None
    served = Process(f"http://127.0.0.1:{port}", process)
    try:
        while b"polyroute: serving on" not in (
            line := await asyncio.wait_for(process.stderr.readline(), 30)
        ):
            assert line, "polyroute serve exited before it listened"
        yield served
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 30)
        served.stderr = rest.decode().splitlines()
        served.code = await asyncio.wait_for(process.wait(), 30)


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
            server.default = Script()
            server.queue.clear()
            server.requests.clear()


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
