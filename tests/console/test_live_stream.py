"""``GET /admin/live`` of a real ``polyroute serve``, read as the page reads it: the
admin key in a header, an opening event with the last hour and the entries, then a
snapshot a second whose figures follow the traffic; at most 32 streams at once; and the
gateway stops at once with streams open (they end; aiohttp does not wait them out)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from polyroute.server.console import MAX_LIVE_STREAMS
from tests.console.conftest import CI_KEY, console_config
from tests.server.helpers import ADMIN_KEY, gateway
from tests.upstreams.openai import OpenAIUpstream

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def events(answer: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """Each server-sent event of ``answer``: its name and decoded data."""
    buffer = b""
    async for chunk in answer.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
            yield fields[b"event"].decode(), json.loads(fields[b"data"])


async def test_the_stream_opens_with_the_hour_then_follows_the_traffic(
    openai_upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    openai_upstream.models = ["m"]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(console_config({"up": openai_upstream}, tmp_path)))
    env = {"ADMIN_KEY": ADMIN_KEY, "CI_KEY": CI_KEY}
    async with (
        gateway(path, env=env) as served,
        aiohttp.ClientSession() as session,
        session.get(f"{served.url}/admin/live", headers=ADMIN) as answer,
    ):
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "text/event-stream"
        assert answer.headers["Cache-Control"] == "no-store"
        stream = events(answer)
        name, opening = await anext(stream)
        assert name == "opening"
        assert set(opening["history"]["series"]) == {
            "requests", "failed_requests", "errors", "ttft_p50_ms", "ttft_p99_ms", "cost_usd",
        }  # fmt: skip
        (entry,) = opening["entries"]
        assert (entry["name"], entry["models"], entry["circuit"]) == ("up", ["m"], "healthy")
        assert entry["attempts_1m"] == 0
        body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
        chat = {"Authorization": f"Bearer {CI_KEY}"}
        for _ in range(2):
            async with session.post(
                f"{served.url}/v1/chat/completions", json=body, headers=chat
            ) as done:
                assert done.status == 200
        counted, cost = 0, 0.0
        async with asyncio.timeout(5):  # a snapshot a second, not a minute
            async for name, snapshot in stream:
                assert name == "snapshot"
                counted += snapshot["point"]["requests"]
                cost += snapshot["point"]["cost_usd"]
                if snapshot["entries"][0]["attempts_1m"] == 2:
                    break
        await stream.aclose()
        assert counted == 2
        assert snapshot["entries"][0]["ttft_p50_ms"] > 0
        assert cost > 0  # the entry is priced: each answer costed (estimated: no usage)
    assert served.code == 0


async def test_past_the_limit_of_streams_a_429_and_streams_end_when_the_gateway_stops(
    openai_upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(console_config({"up": openai_upstream}, tmp_path)))
    env = {"ADMIN_KEY": ADMIN_KEY, "CI_KEY": CI_KEY}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with gateway(path, env=env) as served:
            opened = [
                await session.get(f"{served.url}/admin/live", headers=ADMIN)
                for _ in range(MAX_LIVE_STREAMS)
            ]
            assert {answer.status for answer in opened} == {200}
            async with session.get(f"{served.url}/admin/live", headers=ADMIN) as refused:
                assert refused.status == 429
                assert (await refused.json())["error"]["code"] == "too_many_streams"
            stopping = time.monotonic()
        # The gateway's exit (SIGTERM) is awaited by the block above: it ended the
        # streams itself rather than waiting out aiohttp's 60 s for its handlers.
        assert time.monotonic() - stopping < 10
        assert served.code == 0
        for answer in opened:
            await answer.read()  # each ended cleanly: its body is complete
            answer.release()
