"""Large answers do not keep their peak after they end: the gateway's resident memory
comes back near where it was once they are over, whole answers and streams alike."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.server.helpers import eventually, gateway

PIECE = "x" * 4000
PIECES = 2000  # 8 MB an answer
AT_ONCE = 4
SLACK_MB = 40
"""How far above its warm size the gateway may stay (the answers add 150 MB or more)."""


def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    return b"data: " + json.dumps({**body, "choices": [choice]}).encode() + b"\n\n"


async def large_answer(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    piece = chunk({"content": PIECE})
    for _ in range(PIECES // 50):
        await response.write(piece * 50)
    await response.write(chunk({}, "stop") + b"data: [DONE]\n\n")
    return response


@pytest.fixture
async def large_upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", large_answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    await runner.cleanup()


def resident_mb(pid: int, figure: str = "VmRSS") -> float:
    """The process's resident memory now (``VmHWM``: at its highest so far)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"{figure}:\s+(\d+) kB", status)
    assert found is not None
    return int(found[1]) / 1024


async def test_large_answers_give_their_memory_back_once_they_end(
    tmp_path: Path, large_upstream: str
) -> None:
    entry = {"name": "up", "type": "openai", "base_url": large_upstream, "models": ["m"]}
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"providers": [entry]}))
    async with gateway(config) as served, aiohttp.ClientSession() as session:
        pid = served.process.pid
        url = f"{served.url}/v1/chat/completions"

        async def ask(stream: bool) -> int:
            body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
            async with session.post(url, json={**body, "stream": stream}) as answer:
                assert answer.status == 200
                return len(await answer.read())

        await ask(False)  # warm: every module of the path loaded
        warm = resident_mb(pid)
        for stream in (False, True):
            for _ in range(2):
                sizes = await asyncio.gather(*(ask(stream) for _ in range(AT_ONCE)))
                assert min(sizes) > PIECES * len(PIECE)
        peak = resident_mb(pid, "VmHWM")

        async def given_back() -> bool:
            return resident_mb(pid) < warm + SLACK_MB

        await eventually(given_back, 15, every=0.2)
    assert peak > warm + SLACK_MB  # the answers did take memory while they ran
