"""Requests held to budgets (issue 25, part 4): the worst case reserved before any
upstream call, the cost settled however the request ends, refused at once when a
budget has no room or a model has no price."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from polyroute import AllProvidersFailed, BudgetExceededError, InvalidRequestError, Router
from polyroute.core.request import CHARS_PER_TOKEN
from polyroute.router.budget import BudgetPlan
from polyroute.router.state import BudgetLimit
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

HI = [{"role": "user", "content": "Hi"}]
PRICE = {"input": 2.0, "output": 8.0}
USAGE = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
COST = (1000 * 2.0 + 200 * 8.0) / 1e6
DAY = BudgetLimit(1.0, "day")


def _router(server: OpenAIUpstream, **entry: Any) -> Router:
    base = {"name": "o", "type": "openai", "base_url": server.base_url, "models": ["m"]}
    return Router.from_config({"providers": [{**base, **entry}], "retry": {"attempts": 1}})


def _ceiling(max_tokens: int) -> float:
    return (math.ceil(len("Hi") / CHARS_PER_TOKEN) * 2.0 + max_tokens * 8.0) / 1e6


async def _drain(router: Router, **options: Any) -> str:
    async with router.stream("m", HI, **options) as stream:
        return "".join([text async for text in stream])


async def _settled(router: Router, scope: str, limit: BudgetLimit) -> float:
    return router.state.spent(scope, limit)  # settled here at once, Redis or not


async def test_the_worst_case_is_held_and_the_cost_settled(openai_upstream: OpenAIUpstream) -> None:
    openai_upstream.then(Script(usage=USAGE))
    plan = BudgetPlan({"key:a": DAY, "team:t": BudgetLimit(5.0, "month")})
    async with _router(openai_upstream, price=PRICE) as router:
        async with router.stream("m", HI, budget=plan, max_tokens=300) as stream:
            text = "".join([t async for t in stream])
            # While it runs, its worst case is held: 1 input token, 300 output.
        assert text == "Hello, world!"
        assert stream.budget_remaining_usd == pytest.approx(1.0 - _ceiling(300))
        assert await _settled(router, "key:a", DAY) == pytest.approx(COST)
        assert await router.state.remaining("team:t", BudgetLimit(5.0, "month")) == (
            pytest.approx(5.0 - COST)
        )


async def test_without_room_nothing_is_sent(openai_upstream: OpenAIUpstream) -> None:
    """The default answer (4096 tokens at $8/M: $0.033) does not fit in $0.01."""
    plan = BudgetPlan({"key:a": BudgetLimit(0.01, "day")})
    async with _router(openai_upstream, price=PRICE) as router:
        with pytest.raises(BudgetExceededError) as caught:
            await _drain(router, budget=plan)
        assert (caught.value.scope, caught.value.remaining_usd) == ("key:a", 0.01)
        assert caught.value.needed_usd == pytest.approx(_ceiling(4096))
        # max_tokens small enough: it fits.
        async with router.stream("m", HI, budget=plan, max_tokens=100) as stream:
            assert "".join([t async for t in stream]) == "Hello, world!"
    assert len(openai_upstream.requests) == 1


async def test_a_model_without_a_price_cannot_be_used_under_a_budget(
    openai_upstream: OpenAIUpstream,
) -> None:
    plan = BudgetPlan({"key:a": DAY})
    async with _router(openai_upstream) as router:
        with pytest.raises(InvalidRequestError, match="no known price"):
            await _drain(router, budget=plan)
        async with router.stream("m", HI) as stream:  # without a budget: served, unpriced
            assert "".join([t async for t in stream]) == "Hello, world!"
        assert stream.cost_status == "unpriced"
    assert len(openai_upstream.requests) == 1


async def test_a_stream_the_consumer_left_settles_what_it_cost(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.then(Script(chunks=["a" * 40, "b" * 40, "c"], stall_after=2))
    plan = BudgetPlan({"key:a": DAY})
    async with _router(openai_upstream, price=PRICE) as router:
        async with router.stream("m", HI, budget=plan, max_tokens=1000) as stream:
            async for _ in stream:
                if len(stream.text) >= 80:
                    break
        assert stream.status == "cancelled"
        assert stream.cost_status == "estimated"
        assert await _settled(router, "key:a", DAY) == pytest.approx(stream.cost_usd)
        assert stream.cost_usd == pytest.approx((1 * 2.0 + 20 * 8.0) / 1e6)


async def test_a_failed_request_settles_nothing_and_gives_its_hold_back(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.then(Script(status=500))
    plan = BudgetPlan({"key:a": DAY})
    async with _router(openai_upstream, price=PRICE) as router:
        with pytest.raises(AllProvidersFailed):
            await _drain(router, budget=plan)
        assert await _settled(router, "key:a", DAY) == 0.0
        assert await router.state.remaining("key:a", DAY) == 1.0


async def test_concurrent_requests_never_settle_beyond_the_budget(
    openai_upstream: OpenAIUpstream,
) -> None:
    """Reserving each request's worst case (here 500 tokens of answer, above what each
    uses) keeps settled spend within the budget: 40 requests at once for a budget that
    holds 5 worst cases."""
    openai_upstream.default = Script(usage=USAGE)
    limit = BudgetLimit(0.02, "day")
    plan = BudgetPlan({"key:a": limit})
    async with _router(openai_upstream, price=PRICE) as router:

        async def one() -> bool:
            try:
                async with router.stream("m", HI, budget=plan, max_tokens=500) as stream:
                    async for _ in stream:
                        pass
            except BudgetExceededError:
                return False
            return True

        served = sum(await asyncio.gather(*(one() for _ in range(40))))
        settled = await _settled(router, "key:a", limit)
    assert 4 <= served < 40  # 4 worst cases at once; more as they settle below them
    assert settled == pytest.approx(served * COST)
    assert settled <= limit.usd


async def test_embeddings_are_held_to_the_budget_too(openai_upstream: OpenAIUpstream) -> None:
    plan = BudgetPlan({"key:a": DAY})
    async with _router(openai_upstream, price=PRICE) as router:
        result = await router.embed("m", ["one two", "three"], budget=plan)
        assert result.cost_status == "exact"
        assert await _settled(router, "key:a", DAY) == pytest.approx(result.cost_usd)
        with pytest.raises(BudgetExceededError):
            await router.embed("m", "x" * 9_000_000, budget=plan)
    assert result.budget_remaining_usd is not None
