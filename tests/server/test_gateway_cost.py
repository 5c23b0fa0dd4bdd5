"""What each answer cost, as the gateway tells it (issue 25, part 1): the
``x-polyroute-cost-usd`` header on whole answers, ``cost_usd`` and ``cost_status`` in
the ``polyroute`` object of a stream's last event, in every dialect, and embeddings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import pytest_asyncio
import yaml
from genai_prices import Usage as CatalogueUsage
from genai_prices import calc_price

from tests.server.helpers import gateway
from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")

HI = [{"role": "user", "content": "Hi"}]
USAGE = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
PRICED = (1000 * 2.0 + 200 * 8.0) / 1e6  # at the "priced" entry's price below


@dataclass
class Served:
    url: str
    upstream: OpenAIUpstream
    claude: AnthropicUpstream

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    upstream = await OpenAIUpstream().start()
    claude = await AnthropicUpstream().start()
    base = upstream.base_url
    config = {
        "providers": [
            {"name": "priced", "type": "openai", "base_url": base, "models": ["m"],
             "price": {"input": 2.0, "output": 8.0}},
            {"name": "free", "type": "openai", "base_url": base, "models": ["u"]},
            {"name": "catalogue", "type": "openai", "base_url": base,
             "models": ["gpt-4o", "text-embedding-3-small"]},
            {"name": "claude", "type": "anthropic", "base_url": claude.base_url,
             "models": ["claude-local"], "price": {"input": 3.0, "output": 15.0}},
        ],
        "retry": {"attempts": 1},
    }  # fmt: skip
    path = tmp_path_factory.mktemp("cost") / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        async with gateway(path) as process:
            yield Served(process.url, upstream, claude)
    finally:
        await upstream.stop()
        await claude.stop()
    assert process.code == 0


async def test_a_whole_answer_says_its_cost_in_a_header(served: Served) -> None:
    served.upstream.then(Script(usage=USAGE), Script())
    async with served.openai() as client:
        priced = await client.chat.completions.with_raw_response.create(model="m", messages=HI)
        free = await client.chat.completions.with_raw_response.create(model="u", messages=HI)
    assert float(priced.headers["x-polyroute-cost-usd"]) == pytest.approx(PRICED)
    assert "e" not in priced.headers["x-polyroute-cost-usd"]  # plain decimals
    assert free.headers["x-polyroute-cost-usd"] == "unpriced"


async def test_a_stream_ends_with_its_cost_and_how_sure_it_is(served: Served) -> None:
    served.upstream.then(Script(usage=USAGE))
    async with served.openai() as client:
        chunks = [
            chunk
            async for chunk in await client.chat.completions.create(
                model="m", messages=HI, stream=True, stream_options={"include_usage": True}
            )
        ]
    facts: dict[str, Any] = (chunks[-1].model_extra or {})["polyroute"]
    assert facts["cost_status"] == "exact"
    assert facts["cost_usd"] == pytest.approx(PRICED)


async def test_the_catalogue_prices_a_known_model(served: Served) -> None:
    served.upstream.then(Script(usage=USAGE))
    async with served.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    reference = calc_price(CatalogueUsage(input_tokens=1000, output_tokens=200), "gpt-4o")
    assert float(raw.headers["x-polyroute-cost-usd"]) == pytest.approx(float(reference.total_price))


async def test_the_messages_dialect_carries_the_cost_in_its_last_delta(served: Served) -> None:
    client = anthropic.AsyncAnthropic(base_url=served.url, api_key="unused", max_retries=0)
    async with (
        client,
        client.messages.stream(model="claude-local", max_tokens=64, messages=HI) as stream,
    ):
        events = [event async for event in stream]
        final = await stream.get_final_message()
    delta = next(e for e in events if e.type == "message_delta")
    facts = (delta.model_extra or {})["polyroute"]
    usage = final.usage
    expected = (usage.input_tokens * 3.0 + usage.output_tokens * 15.0) / 1e6
    assert (facts["cost_status"], facts["cost_usd"]) == ("exact", pytest.approx(expected))


async def test_embeddings_say_their_cost(served: Served) -> None:
    async with served.openai() as client:
        raw = await client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input=["one two", "three"]
        )
    tokens = raw.parse().usage.prompt_tokens
    reference = calc_price(
        CatalogueUsage(input_tokens=tokens), "text-embedding-3-small", provider_id="openai"
    )
    assert float(raw.headers["x-polyroute-cost-usd"]) == pytest.approx(float(reference.total_price))


def _metric(text: str, name: str, **labels: str) -> float:
    """A sample's value in a Prometheus exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == f"{name}{{{wanted}}}":
            return float(value)
    return 0.0


async def test_metrics_count_tokens_and_cost_per_model_entry_and_key(served: Served) -> None:
    async def scrape() -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{served.url}/metrics") as r:
            return await r.text()

    usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 100}}
    served.upstream.then(Script(usage=usage), Script(usage=USAGE))
    before = await scrape()
    async with served.openai() as client:
        await client.chat.completions.create(model="m", messages=HI)
        await client.chat.completions.create(model="u", messages=HI)
    after = await scrape()

    def grew(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    priced = {"model": "m", "provider": "priced", "key": ""}
    assert grew("polyroute_tokens_total", kind="input", **priced) == 900
    assert grew("polyroute_tokens_total", kind="cached_input", **priced) == 100
    assert grew("polyroute_tokens_total", kind="output", **priced) == 200
    assert grew("polyroute_cost_usd_total", **priced) == pytest.approx(PRICED)
    free = {"model": "u", "provider": "free", "key": ""}
    assert grew("polyroute_tokens_total", kind="input", **free) == 1000
    assert 'polyroute_cost_usd_total{key="",model="u"' not in after  # unpriced: not 0
