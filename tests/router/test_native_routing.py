"""Routing across the four wire formats: Anthropic -> Gemini -> OpenAI-format -> DarkAI,
for fallback and mid-stream continuation, text and (atomic) tool calls."""

from __future__ import annotations

import json
from typing import Any

from polyroute import Router
from tests.router.helpers import FakeSleep
from tests.upstreams.anthropic import AnthropicUpstream, anthropic_error
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.gemini import GeminiUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

HI = [{"role": "user", "content": "Why is the sky blue?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather"}}]


def entries(
    claude: AnthropicUpstream, gemini: GeminiUpstream, oa: OpenAIUpstream, dark: DarkAIUpstream
) -> list[dict[str, Any]]:
    return [
        {"name": "claude", "type": "anthropic", "base_url": claude.base_url, "models": ["m"]},
        {"name": "gemini", "type": "gemini", "base_url": gemini.base_url, "models": ["m"]},
        {"name": "oa", "type": "openai", "base_url": oa.base_url, "models": ["m"]},
        {
            "name": "dark",
            "type": "darkai",
            "api_endpoint": dark.url,
            "working": True,
            "models": ["m"],
        },
    ]


async def test_an_answer_cut_three_times_is_continued_across_all_four_formats(
    anthropic_upstream: AnthropicUpstream,
    gemini_upstream: GeminiUpstream,
    openai_upstream: OpenAIUpstream,
    darkai_upstream: DarkAIUpstream,
) -> None:
    anthropic_upstream.default = Script(chunks=["The sky ", "is "], reset_after=2)
    gemini_upstream.default = Script(chunks=["blue ", "because "], reset_after=2)
    openai_upstream.default = Script(chunks=["of Rayleigh "], reset_after=1)
    darkai_upstream.default = Script(chunks=["scattering."])
    config = {
        "providers": entries(anthropic_upstream, gemini_upstream, openai_upstream, darkai_upstream),
        "retry": {"attempts": 1},
        "max_relays": 3,
    }
    async with (
        Router.from_config(config, sleep=FakeSleep()) as router,
        router.stream("m", HI) as stream,
    ):
        pieces = [text async for text in stream]
    assert "".join(pieces) == "The sky is blue because of Rayleigh scattering."
    assert [a.provider for a in stream.attempts] == ["claude", "gemini", "oa", "dark"]
    assert stream.status == "switched"
    # Each one was handed exactly the text so far, in its own format.
    gemini_turns = gemini_upstream.requests[0].body["contents"]
    assert gemini_turns[1] == {"role": "model", "parts": [{"text": "The sky is "}]}
    assert openai_upstream.requests[0].body["messages"][1]["content"] == "The sky is blue because "
    assert "The sky is blue because of Rayleigh " in darkai_upstream.requests[0].body["query"]


async def test_a_model_fallback_chain_runs_from_anthropic_to_gemini(
    anthropic_upstream: AnthropicUpstream, gemini_upstream: GeminiUpstream
) -> None:
    overloaded = anthropic_error("overloaded_error", "Overloaded")
    anthropic_upstream.default = Script(status=529, error_body=overloaded)
    config = {
        "providers": [
            {"name": "claude", "type": "anthropic", "base_url": anthropic_upstream.base_url,
             "models": ["claude-sonnet"]},
            {"name": "gemini", "type": "gemini", "base_url": gemini_upstream.base_url,
             "models": ["gemini-pro"]},
        ],
        "fallbacks": {"claude-sonnet": ["gemini-pro"]},
        "retry": {"attempts": 2},
    }  # fmt: skip
    async with Router.from_config(config, sleep=FakeSleep()) as router:
        text, stream = await _collect(router, "claude-sonnet")
    assert text == "Hello, world!"
    assert (stream.provider, stream.model) == ("gemini", "gemini-pro")
    assert len(anthropic_upstream.requests) == 2  # 529 is retried once, then the fallback
    assert gemini_upstream.requests[0].path == "/v1beta/models/gemini-pro:streamGenerateContent"


async def test_atomic_tool_calls_survive_a_death_inside_the_arguments(
    anthropic_upstream: AnthropicUpstream, gemini_upstream: GeminiUpstream
) -> None:
    cut = {"id": "toolu_1", "name": "get_weather", "json": ['{"city": ', '"Par']}
    # The Anthropic answer dies inside the call's arguments; Gemini answers whole.
    anthropic_upstream.default = Script(chunks=[{"tool_use": cut}], reset_after=1)
    call = {"functionCall": {"id": "fc-1", "name": "get_weather", "args": {"city": "Oslo"}}}
    gemini_upstream.default = Script(chunks=[call], finish_reason="stop")
    claude = {"name": "claude", "type": "anthropic", "base_url": anthropic_upstream.base_url}
    gemini = {"name": "gemini", "type": "gemini", "base_url": gemini_upstream.base_url}
    config = {
        "providers": [{**claude, "models": ["m"]}, {**gemini, "models": ["m"]}],
        "tool_calls": "atomic",
        "retry": {"attempts": 1},
    }
    async with (
        Router.from_config(config, sleep=FakeSleep()) as router,
        router.stream("m", HI, tools=TOOLS) as stream,
    ):
        deltas = [delta async for delta in stream.deltas()]
    (only,) = stream.message.tool_calls
    assert (only.id, only.name, json.loads(only.arguments)) == (
        "fc-1",
        "get_weather",
        {"city": "Oslo"},
    )
    assert "Par" not in repr(deltas)  # nothing of the cut call reached the consumer
    assert stream.provider == "gemini"


async def _collect(router: Router, model: str) -> tuple[str, Any]:
    async with router.stream(model, HI) as stream:
        text = "".join([t async for t in stream])
    return text, stream
