"""An upstream's failure names where it happened: a status error the URL that answered
(also when a provider refined it from the body), a body cut off mid-answer in words."""

from __future__ import annotations

import json

import pytest

from polyroute import RateLimitedError, UpstreamConnectionError, UpstreamStatusError
from polyroute.providers import OpenAI
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

HI = [{"role": "user", "content": "Hi"}]


async def collect(provider: OpenAI) -> str:
    return "".join([text async for text in provider.create_async_generator("m", HI)])


async def test_a_status_error_names_the_url_that_answered(openai_upstream: OpenAIUpstream) -> None:
    openai_upstream.default = Script(status=503, error_body="<html>busy</html>")
    async with OpenAI(name="oa", base_url=openai_upstream.base_url, models=[]) as provider:
        with pytest.raises(UpstreamStatusError) as caught:
            await collect(provider)
    url = f"{openai_upstream.base_url}/chat/completions"
    assert caught.value.url == url
    assert str(caught.value) == f"oa: HTTP 503 from {url}: <html>busy</html>"


async def test_an_error_refined_from_the_body_keeps_the_url(
    openai_upstream: OpenAIUpstream,
) -> None:
    body = json.dumps({"error": {"message": "slow down", "code": "rate_limit_exceeded"}})
    openai_upstream.default = Script(status=429, error_body=body)
    async with OpenAI(name="oa", base_url=openai_upstream.base_url, models=[]) as provider:
        with pytest.raises(RateLimitedError) as caught:
            await collect(provider)
        with pytest.raises(RateLimitedError) as embedding:
            await provider.embed("e", ["hi"])
    url = openai_upstream.base_url
    assert str(caught.value) == f"oa: HTTP 429 from {url}/chat/completions: slow down"
    assert str(embedding.value) == f"oa: HTTP 429 from {url}/embeddings: slow down"


async def test_a_body_cut_off_mid_answer_says_the_upstream_closed_it(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.default = Script(chunks=["Hel", "lo", "!"], reset_after=2)
    received: list[str] = []

    async def consume(provider: OpenAI) -> None:
        async for text in provider.create_async_generator("m", HI):
            received.append(text)

    async with OpenAI(name="oa", base_url=openai_upstream.base_url, models=[]) as provider:
        with pytest.raises(UpstreamConnectionError) as caught:
            await consume(provider)
    assert received == ["Hel", "lo"]
    assert str(caught.value) == (
        "oa: the upstream closed the connection before the end of the answer"
    )
    assert (caught.value.broke_off, caught.value.retryable) == (True, True)
