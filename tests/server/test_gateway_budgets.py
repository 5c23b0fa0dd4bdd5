"""Budgets of gateway keys and teams, held across two ``polyroute serve`` processes on
one real redis-server (issue 25, part 4): each request reserves its worst case before
any upstream call, so the spend settled by every process together stays within the
budget; a request without room gets 429 ``budget_exceeded`` in its dialect's shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
import yaml

from tests.redis_server import RedisServer
from tests.server.helpers import gateway
from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEYS = {"ALPHA_KEY": "pr-alpha-0123456789", "BETA_KEY": "pr-beta-0123456789",
        "GAMMA_KEY": "pr-gamma-0123456789", "DELTA_KEY": "pr-delta-0123456789"}  # fmt: skip
USAGE = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
COST = (1000 * 2.0 + 200 * 8.0) / 1e6  # $0.0036 at the entry's price
WORST = (1 * 2.0 + 500 * 8.0) / 1e6  # max_tokens 500 and a 1-token prompt: $0.004002
HI = [{"role": "user", "content": "Hi"}]


@dataclass
class Served:
    urls: list[str]
    upstream: OpenAIUpstream


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> AsyncIterator[Served]:
    redis_server.cli("FLUSHALL")
    upstream = await OpenAIUpstream().start()
    upstream.default = Script(usage=USAGE)
    claude = await AnthropicUpstream().start()
    day = {"usd": 0.02, "period": "day"}
    config = {
        "providers": [
            {"name": "priced", "type": "openai", "base_url": upstream.base_url,
             "models": ["m"], "price": {"input": 2.0, "output": 8.0}},
            {"name": "claude", "type": "anthropic", "base_url": claude.base_url,
             "models": ["claude-local"], "price": {"input": 2.0, "output": 8.0}},
        ],
        "state": {"backend": "redis", "url": redis_server.url},
        "gateway": {
            "keys": [
                {"name": "alpha", "key_env": "ALPHA_KEY", "budget": day},
                {"name": "beta", "key_env": "BETA_KEY", "team": "search"},
                {"name": "gamma", "key_env": "GAMMA_KEY", "team": "search"},
                {"name": "delta", "key_env": "DELTA_KEY", "team": "search",
                 "budget": {"usd": 0.0001, "period": "day"}},
            ],
            "teams": [{"name": "search", "budget": {"usd": 0.01, "period": "month"}}],
        },
    }  # fmt: skip
    path = tmp_path_factory.mktemp("budgets") / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        async with AsyncExitStack() as stack:
            one = await stack.enter_async_context(gateway(path, env=KEYS))
            two = await stack.enter_async_context(gateway(path, env=KEYS))
            yield Served([one.url, two.url], upstream)
    finally:
        await upstream.stop()
        await claude.stop()


async def _chat(
    session: aiohttp.ClientSession, url: str, key: str, **body: Any
) -> tuple[int, dict[str, str], Any]:
    payload = {"model": "m", "messages": HI, "max_tokens": 500, **body}
    headers = {"Authorization": f"Bearer {KEYS[key]}"}
    async with session.post(f"{url}/v1/chat/completions", json=payload, headers=headers) as r:
        return r.status, dict(r.headers), await r.json()


async def test_a_burst_across_two_gateways_never_spends_beyond_the_budget(
    served: Served,
) -> None:
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(
            *(_chat(session, served.urls[i % 2], "ALPHA_KEY") for i in range(30))
        )
    admitted = [headers for status, headers, _ in answers if status == 200]
    refused = [body for status, _, body in answers if status == 429]
    assert len(admitted) + len(refused) == 30
    spent = sum(float(headers["x-polyroute-cost-usd"]) for headers in admitted)
    assert spent <= 0.02  # the budget, exactly: each request held its worst case
    assert len(admitted) >= int(0.02 // WORST)  # and no room was wasted at the start
    assert spent == pytest.approx(len(admitted) * COST)
    assert all(body["error"]["code"] == "budget_exceeded" for body in refused)
    left = [float(headers["x-polyroute-budget-remaining-usd"]) for headers in admitted]
    assert min(left) >= 0
    assert len(served.upstream.requests) >= len(admitted)  # refused ones never went upstream


async def test_a_team_budget_is_shared_by_its_keys_and_told_in_each_dialect(
    served: Served,
) -> None:
    """beta and gamma share the team's $0.01 a month: two answers, then no room, for
    either of them, on either gateway; delta's own $0.0001 refuses it first."""
    async with aiohttp.ClientSession() as session:
        first = await _chat(session, served.urls[0], "BETA_KEY")
        second = await _chat(session, served.urls[1], "GAMMA_KEY")
        third = await _chat(session, served.urls[0], "BETA_KEY")
        own = await _chat(session, served.urls[1], "DELTA_KEY")
    assert (first[0], second[0], third[0]) == (200, 200, 429)
    assert "team:search" in third[2]["error"]["message"]
    assert own[0] == 429
    assert "key:delta" in own[2]["error"]["message"]
    client = openai.AsyncOpenAI(
        base_url=f"{served.urls[1]}/v1", api_key=KEYS["GAMMA_KEY"], max_retries=0
    )
    async with client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="m", messages=HI, max_tokens=500)
    assert caught.value.code == "budget_exceeded"
    headers = {"x-api-key": KEYS["GAMMA_KEY"], "anthropic-version": "2023-06-01"}
    body = {"model": "claude-local", "max_tokens": 500, "messages": HI}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{served.urls[0]}/v1/messages", json=body, headers=headers) as answer,
    ):
        error = await answer.json()
    assert answer.status == 429
    assert error["type"] == "error"
    assert error["error"]["type"] == "rate_limit_error"
    assert "budget exceeded" in error["error"]["message"]
