"""Request options are checked at the call, before any byte is sent; provider-specific
keys travel in extra_body, merged into the upstream JSON as the openai SDK does."""

from __future__ import annotations

from typing import Any

import pytest

from polyroute import InvalidRequestError, Router
from tests.router.helpers import HI
from tests.upstreams.openai import OpenAIUpstream


def config(server: OpenAIUpstream) -> dict[str, Any]:
    return {"providers": [{"name": "oa", "type": "openai", "base_url": server.base_url}]}


async def test_options_reach_the_upstream_and_extra_body_is_merged_at_the_top(
    openai_upstream: OpenAIUpstream,
) -> None:
    options = {
        "temperature": 0.3,
        "max_completion_tokens": 40,
        "stop": ["END"],
        "seed": 1,
        "n": 1,
        "user": "u-1",
        "metadata": {"team": "a"},
        "logprobs": True,
        "top_logprobs": 2,
        "response_format": {"type": "json_object"},
    }
    extra = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "chat_template_kwargs": {}}
    async with Router.from_config(config(openai_upstream)) as router:
        await router.complete("local-large", HI, extra_body=extra, **options)
    body = openai_upstream.requests[0].body
    for key, value in {**options, **extra}.items():
        assert body[key] == value
    assert "extra_body" not in body


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": 5}, r"unknown request parameter top_k; provider-specific keys go in extra_body"),
        ({"n": 2}, r"n=2: polyroute streams one answer per request"),
        ({"temperature": "hot"}, r"temperature: Input should be a valid number"),
        ({"max_tokens": -1}, r"max_tokens: Input should be greater than or equal to 1"),
        ({"top_p": 1.5}, r"top_p: Input should be less than or equal to 1"),
        ({"user": object()}, r"user: Input should be a valid string"),
        ({"stop": 3}, r"stop"),
        ({"tools": [{"type": "function"}]}, r"tools.0.function: Field required"),
        ({"tool_choice": "sometimes"}, r"tool_choice"),
        ({"extra_body": {"x": object()}}, r"extra_body is not JSON-serializable"),
    ],
)
async def test_bad_options_raise_at_the_call_naming_the_option(
    openai_upstream: OpenAIUpstream, options: dict[str, Any], message: str
) -> None:
    async with Router.from_config(config(openai_upstream)) as router:
        with pytest.raises(InvalidRequestError, match=message):
            router.stream("local-large", HI, **options)
    assert openai_upstream.requests == []


@pytest.mark.parametrize("model", [["m"], 3, {"name": "m"}])
async def test_a_model_that_is_not_a_string_is_an_invalid_request(
    openai_upstream: OpenAIUpstream, model: Any
) -> None:
    async with Router.from_config(config(openai_upstream)) as router:
        with pytest.raises(InvalidRequestError, match="model must be a string"):
            router.stream(model, HI)
    assert isinstance(InvalidRequestError("x"), ValueError)
