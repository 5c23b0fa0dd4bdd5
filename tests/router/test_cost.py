"""What an answer cost (issue 25, part 1): each attempt at its own entry's price, from
the usage its upstream reported in its own format, estimated when it was cut first,
and ``unpriced`` (never a silent 0) for a model with no known price."""

from __future__ import annotations

import math
from typing import Any

import pytest
from genai_prices import Usage as CatalogueUsage
from genai_prices import calc_price

from polyroute import ConfigError, Router, Usage
from polyroute.core.pricing import CHARS_PER_OUTPUT_TOKEN, Cost, Price
from polyroute.core.request import CHARS_PER_TOKEN
from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.gemini import GeminiUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.usefixtures("chunk_path")  # decoded, and relayed as it came

HI = [{"role": "user", "content": "Hi"}]
PRICE = {"input": 2.0, "output": 8.0, "cache_read": 0.5, "cache_write": 2.5, "reasoning": 10.0}
M = 1e-6  # USD per token for a price of 1 per million


def _entry(name: str, kind: str, server: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": kind, "base_url": server.base_url, "models": ["m"], **extra}


async def _answer(router: Router, model: str = "m") -> Any:
    async with router.stream(model, HI) as stream:
        async for _ in stream:
            pass
    return stream


async def test_openai_usage_prices_cached_input_and_reasoning_apart(
    openai_upstream: OpenAIUpstream,
) -> None:
    """OpenAI counts cached tokens inside prompt_tokens, reasoning inside output."""
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 300,
        "total_tokens": 1300,
        "prompt_tokens_details": {"cached_tokens": 400},
        "completion_tokens_details": {"reasoning_tokens": 100},
    }
    openai_upstream.then(Script(usage=usage))
    router = Router.from_config(
        {"providers": [_entry("o", "openai", openai_upstream, price=PRICE)]}
    )
    async with router:
        stream = await _answer(router)
    expected = (600 * 2.0 + 400 * 0.5 + 200 * 8.0 + 100 * 10.0) * M
    assert stream.cost_status == "exact"
    assert stream.cost_usd == pytest.approx(expected)


async def test_anthropic_usage_prices_cache_reads_and_writes_reported_beside_input(
    anthropic_upstream: AnthropicUpstream,
) -> None:
    """Anthropic reports cache reads and writes beside input_tokens, not inside."""
    cache = {"input_tokens": 50, "cache_read_input_tokens": 700, "cache_creation_input_tokens": 200}
    anthropic_upstream.then(Script(usage=cache))
    entry = _entry("a", "anthropic", anthropic_upstream, price=PRICE)
    async with Router.from_config({"providers": [entry]}) as router:
        stream = await _answer(router)
    outputs = stream.usage.completion_tokens  # the server counts its deltas
    expected = (50 * 2.0 + 700 * 0.5 + 200 * 2.5 + outputs * 8.0) * M
    assert (stream.cost_status, stream.cost_usd) == ("exact", pytest.approx(expected))


async def test_gemini_usage_prices_thoughts_as_reasoning(gemini_upstream: GeminiUpstream) -> None:
    usage = {
        "promptTokenCount": 900,
        "cachedContentTokenCount": 300,
        "candidatesTokenCount": 40,
        "thoughtsTokenCount": 60,
        "totalTokenCount": 1000,
    }
    gemini_upstream.then(Script(usage=usage))
    entry = _entry("g", "gemini", gemini_upstream, price=PRICE)
    async with Router.from_config({"providers": [entry]}) as router:
        stream = await _answer(router)
    expected = (600 * 2.0 + 300 * 0.5 + 40 * 8.0 + 60 * 10.0) * M
    assert (stream.cost_status, stream.cost_usd) == ("exact", pytest.approx(expected))


async def test_the_catalogue_prices_a_known_model_as_genai_prices_does(
    openai_upstream: OpenAIUpstream,
) -> None:
    """No ``price:``: the model's name finds it in genai-prices' bundled snapshot (the
    loopback base_url names no provider there)."""
    usage = {"prompt_tokens": 1200, "completion_tokens": 80, "total_tokens": 1280}
    openai_upstream.then(Script(usage=usage))
    entry = {"name": "o", "type": "openai", "base_url": openai_upstream.base_url}
    async with Router.from_config({"providers": [entry]}) as router:
        stream = await _answer(router, "gpt-4o")
    reference = calc_price(CatalogueUsage(input_tokens=1200, output_tokens=80), "gpt-4o")
    assert stream.cost_status == "exact"
    assert stream.cost_usd == pytest.approx(float(reference.total_price))


async def test_a_model_without_a_price_is_unpriced_not_free(
    openai_upstream: OpenAIUpstream,
) -> None:
    async with Router.from_config({"providers": [_entry("o", "openai", openai_upstream)]}) as r:
        stream = await _answer(r)
    assert (stream.cost_usd, stream.cost_status) == (None, "unpriced")


async def test_a_relayed_answer_costs_both_attempts_the_cut_one_estimated(
    openai_upstream: OpenAIUpstream, anthropic_upstream: AnthropicUpstream
) -> None:
    """The first entry is cut after two chunks, before it reported usage: its share is
    estimated (prompt as for token limits, its text at 4 characters a token); the
    second's is exact, at its own price."""
    openai_upstream.then(Script(chunks=["Hello there, ", "this is long", "!"], reset_after=2))
    second = {"input": 1.0, "output": 3.0}
    entries = [
        _entry("first", "openai", openai_upstream, price=PRICE, priority=0),
        _entry("second", "anthropic", anthropic_upstream, price=second, priority=1),
    ]
    async with Router.from_config({"providers": entries}) as router:
        stream = await _answer(router)
    cut, served = stream.attempts
    assert (cut.outcome, served.outcome, stream.status) == ("failed", "ok", "switched")
    prompt = math.ceil(len("Hi") / CHARS_PER_TOKEN)
    estimated = (prompt * 2.0 + math.ceil(cut.chars / CHARS_PER_OUTPUT_TOKEN) * 8.0) * M
    usage = served.usage
    exact = (usage.prompt_tokens * 1.0 + usage.completion_tokens * 3.0) * M
    assert cut.chars == len("Hello there, this is long")
    assert stream.cost_status == "estimated"
    assert stream.cost_usd == pytest.approx(estimated + exact)


async def test_a_stream_the_consumer_left_is_still_costed(openai_upstream: OpenAIUpstream) -> None:
    """The provider bills what it generated even when the client hung up."""
    openai_upstream.then(Script(chunks=["a" * 40, "b" * 40, "c"], stall_after=2))
    router = Router.from_config(
        {"providers": [_entry("o", "openai", openai_upstream, price=PRICE)]}
    )
    async with router, router.stream("m", HI) as stream:
        async for text in stream:
            if len(stream.text) >= 80:
                break
            assert text
    (attempt,) = stream.attempts
    assert (stream.status, attempt.outcome, attempt.chars) == ("cancelled", "cancelled", 80)
    assert stream.cost_status == "estimated"
    assert stream.cost_usd == pytest.approx((1 * 2.0 + 20 * 8.0) * M)


async def test_an_attempt_that_produced_nothing_costs_nothing(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.then(Script(status=503))
    entries = [_entry("o", "openai", openai_upstream, price=PRICE)]
    async with Router.from_config({"providers": entries, "retry": {"attempts": 2}}) as router:
        stream = await _answer(router)
    assert [a.outcome for a in stream.attempts] == ["failed", "ok"]
    usage = stream.usage
    assert stream.cost_usd == pytest.approx(
        (usage.prompt_tokens * 2.0 + usage.completion_tokens * 8.0) * M
    )


def test_tiers_price_the_whole_request_above_their_start() -> None:
    tier = Price(input=6.0, output=22.5)
    price = Price(input=3.0, output=15.0, tiers=((200_000, tier),))
    assert price.cost(Usage(200_000, 10)) == pytest.approx((200_000 * 3.0 + 10 * 15.0) * M)
    assert price.cost(Usage(200_001, 10)) == pytest.approx((200_001 * 6.0 + 10 * 22.5) * M)


def test_costs_add_up_and_one_unpriced_attempt_makes_the_whole_unpriced() -> None:
    exact, estimated = Cost(0.25, "exact"), Cost(0.5, "estimated")
    assert Cost.of_attempts([exact, exact]) == Cost(0.5, "exact")
    assert Cost.of_attempts([exact, estimated]) == Cost(0.75, "estimated")
    assert Cost.of_attempts([exact, Cost(None, "unpriced")]) == Cost(None, "unpriced")
    assert Cost.of_attempts([]) == Cost(0.0, "exact")


@pytest.mark.parametrize("price", [{"input": -1.0}, {"output": 1.0}, {"input": 1, "bogus": 2}])
def test_a_bad_price_is_a_config_error_naming_the_key(price: dict[str, Any]) -> None:
    entry = {"name": "o", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "price": price}
    with pytest.raises(ConfigError, match=r"providers\.0\.price"):
        Router.from_config({"providers": [entry]})
