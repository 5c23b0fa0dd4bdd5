"""The response cache on `polyroute serve`: a hit in every dialect, the request header
over a key's mode over a model's, and two gateways sharing one on a real Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import pytest_asyncio
import yaml

from tests.redis_server import RedisServer
from tests.server.helpers import Upstreams, gateway
from tests.state.helpers import until
from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")
PLAIN, CACHED = "gw-plain-key-1a2b3c4d5e", "gw-cached-key-6f7a8b9c0d"
USE = {"x-polyroute-cache": "use"}


@dataclass
class Served:
    url: str
    upstreams: Upstreams

    def auth(self, key: str = PLAIN, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", **headers}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    upstreams = Upstreams(
        await OpenAIUpstream(models=["m", "atomic"]).start(),
        await OpenAIUpstream(models=["m", "atomic"]).start(),
        await AnthropicUpstream().start(),
    )
    keys = [
        {"name": "plain", "key_env": "GW_PLAIN"},
        {"name": "cached", "key_env": "GW_CACHED", "cache": "use"},
    ]
    data = {
        "providers": upstreams.entries(),
        "retry": {"attempts": 1},
        "cache": {"backend": "memory"},
        "per_model": {"atomic": {"cache": "use"}},
        "gateway": {"keys": keys},
    }
    config = tmp_path_factory.mktemp("cache") / "gateway.yaml"
    config.write_text(yaml.safe_dump(data))
    env = {"GW_PLAIN": PLAIN, "GW_CACHED": CACHED}
    try:
        async with gateway(config, env=env) as process:
            yield Served(process.url, upstreams)
    finally:
        for server in (upstreams.openai, upstreams.backup, upstreams.claude):
            await server.stop()
    assert process.code == 0


@pytest.fixture(autouse=True)
def fresh_scripts(served: Served) -> None:
    served.upstreams.reset()


async def _chat(
    url: str, headers: dict[str, str], content: str, model: str = "m", **body: Any
) -> tuple[int, dict[str, str], Any]:
    request = {"model": model, "messages": [{"role": "user", "content": content}], **body}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=request, headers=headers) as response,
    ):
        text = await response.text()
        return response.status, dict(response.headers), text


async def test_a_chat_completion_hit_whole_and_streamed(served: Served) -> None:
    auth = served.auth(**USE)
    status, first, body = await _chat(served.url, auth, "chat whole")
    assert (status, first["x-polyroute-cache"]) == (200, "miss")
    status, again, replayed = await _chat(served.url, auth, "chat whole")
    assert (status, again["x-polyroute-cache"]) == (200, "hit")
    answer = json.loads(replayed)
    assert (
        answer["choices"][0]["message"]["content"]
        == json.loads(body)["choices"][0]["message"]["content"]
    )
    assert answer["usage"]["cached"] is True
    _, streamed, events = await _chat(served.url, auth, "chat whole", stream=True)
    assert streamed["x-polyroute-cache"] == "hit"
    assert '"content":"Hello, world!"' in events
    assert '"cache":"hit"' in events  # the facts on the last event
    assert len(served.upstreams.openai.requests) == 1


async def test_a_messages_hit_through_the_anthropic_sdk(served: Served) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=served.url, api_key=PLAIN, max_retries=0, default_headers=USE
    )
    texts, caches = [], []
    async with client:
        for _ in range(2):
            raw = await client.messages.with_raw_response.create(
                model="claude-local-large",
                max_tokens=50,
                messages=[{"role": "user", "content": "messages hit"}],
            )
            message = await raw.parse()
            texts.append("".join(b.text for b in message.content if b.type == "text"))
            caches.append(raw.headers["x-polyroute-cache"])
    assert caches == ["miss", "hit"]
    assert texts[0] == texts[1]
    assert texts[0]
    assert len(served.upstreams.claude.requests) == 1


async def test_a_responses_hit_through_the_openai_sdk(served: Served) -> None:
    client = openai.AsyncOpenAI(
        base_url=f"{served.url}/v1", api_key=PLAIN, max_retries=0, default_headers=USE
    )
    texts, caches = [], []
    async with client:
        for _ in range(2):
            raw = await client.responses.with_raw_response.create(model="m", input="responses")
            texts.append(raw.parse().output_text)
            caches.append(raw.headers["x-polyroute-cache"])
        stream = await client.responses.create(model="m", input="responses", stream=True)
        streamed = "".join(
            [e.delta async for e in stream if e.type == "response.output_text.delta"]
        )
    assert caches == ["miss", "hit"]
    assert texts == ["Hello, world!", "Hello, world!"]
    assert streamed == "Hello, world!"
    assert len(served.upstreams.openai.requests) == 1


async def test_a_key_with_cache_use_and_the_header_over_it(served: Served) -> None:
    key = served.auth(CACHED)
    _, first, _ = await _chat(served.url, key, "keyed")
    _, second, _ = await _chat(served.url, key, "keyed")
    _, off, _ = await _chat(served.url, {**key, "x-polyroute-cache": "off"}, "keyed")
    _, plain, _ = await _chat(served.url, served.auth(), "keyed")
    assert (first["x-polyroute-cache"], second["x-polyroute-cache"]) == ("miss", "hit")
    assert "x-polyroute-cache" not in off
    assert "x-polyroute-cache" not in plain
    assert len(served.upstreams.openai.requests) == 3


async def test_a_model_with_per_model_cache_use(served: Served) -> None:
    _, first, _ = await _chat(served.url, served.auth(), "per model", model="atomic")
    _, second, _ = await _chat(served.url, served.auth(), "per model", model="atomic")
    assert (first["x-polyroute-cache"], second["x-polyroute-cache"]) == ("miss", "hit")
    assert len(served.upstreams.openai.requests) == 1


async def test_a_bad_cache_header_is_a_400(served: Served) -> None:
    headers = served.auth(**{"x-polyroute-cache": "always"})
    status, _, body = await _chat(served.url, headers, "bad")
    assert status == 400
    assert "x-polyroute-cache must be" in body
    assert served.upstreams.openai.requests == []


async def test_two_gateways_on_one_redis_share_the_cache(
    tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    upstream = await OpenAIUpstream(models=["m"]).start()
    upstream.default = Script(chunks=["Shared"])
    data = {
        "providers": [{"name": "up", "type": "openai", "base_url": upstream.base_url}],
        "state": {"backend": "redis", "url": redis_url},
        "cache": {"backend": "redis"},
    }
    config = tmp_path / "shared.yaml"
    config.write_text(yaml.safe_dump(data))
    try:
        async with AsyncExitStack() as stack:
            one = await stack.enter_async_context(gateway(config))
            two = await stack.enter_async_context(gateway(config))
            _, first, _ = await _chat(one.url, USE, "shared")
            await until(lambda: bool(redis_server.cli("KEYS", "polyroute-cache:*")), 10)
            _, second, body = await _chat(two.url, USE, "shared")
    finally:
        await upstream.stop()
    assert (first["x-polyroute-cache"], second["x-polyroute-cache"]) == ("miss", "hit")
    assert json.loads(body)["choices"][0]["message"]["content"] == "Shared"
    assert len(upstream.requests) == 1
