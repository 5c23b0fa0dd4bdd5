"""The native Anthropic provider against a local server speaking the Messages API,
which the official SDK drives first to prove it speaks the real format."""

from __future__ import annotations

import json

import anthropic
import pytest
from structlog.testing import capture_logs

from polyroute import (
    AuthenticationError,
    ContextLengthExceededError,
    FinishDelta,
    ModelNotSupportedError,
    RateLimitedError,
    ReasoningDelta,
    ReasoningSignatureDelta,
    Router,
    TextDelta,
    ToolCallDelta,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    Usage,
    UsageDelta,
)
from polyroute.providers import Anthropic
from tests.upstreams.anthropic import AnthropicUpstream, anthropic_error
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

HI = [{"role": "user", "content": "Hi"}]
WEATHER = {"id": "toolu_1", "name": "get_weather", "json": ['{"city": ', '"Paris"}']}
CLOCK = {"id": "toolu_2", "name": "get_time", "json": ["{}"]}


def call(call_id: str, city: str) -> dict[str, object]:
    function = {"name": "get_weather", "arguments": json.dumps({"city": city})}
    return {"id": call_id, "type": "function", "function": function}


def use(call_id: str, city: str) -> dict[str, object]:
    return {"type": "tool_use", "id": call_id, "name": "get_weather", "input": {"city": city}}


def error(
    status: int, kind: str, message: str, expected: type[Exception], retryable: bool, **headers: str
) -> object:
    body = anthropic_error(kind, message)
    return pytest.param(status, body, headers, expected, retryable, id=kind)


def provider(server: AnthropicUpstream, **kwargs: object) -> Anthropic:
    return Anthropic(base_url=server.base_url, api_key="sk-ant-test-0123456789", **kwargs)  # type: ignore[arg-type]


async def test_the_official_sdk_reads_the_local_server(
    anthropic_upstream: AnthropicUpstream,
) -> None:
    anthropic_upstream.default = Script(
        chunks=[{"thinking": "weather?"}, "Let me look. ", {"tool_use": WEATHER}],
        finish_reason="tool_calls",
    )
    client = anthropic.AsyncAnthropic(base_url=anthropic_upstream.base_url, api_key="k")
    async with client.messages.stream(
        model="claude-local-large", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        message = await stream.get_final_message()
    await client.close()
    assert text == "Let me look. "
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[2].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 3


async def test_text_tool_calls_thinking_and_usage_become_deltas(
    anthropic_upstream: AnthropicUpstream,
) -> None:
    anthropic_upstream.default = Script(
        chunks=[{"thinking": "hmm"}, "Two calls: ", {"tool_use": WEATHER}, {"tool_use": CLOCK}],
        finish_reason="tool_calls",
    )
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    async with provider(anthropic_upstream) as claude:
        deltas = [d async for d in claude.stream("claude-local-large", HI, tools=tools)]
    assert deltas == [
        UsageDelta(Usage(3, 0, 3)),  # message_start: the prompt's tokens, at once
        ReasoningDelta("hmm"),
        ReasoningSignatureDelta("sig"),
        TextDelta("Two calls: "),
        # block 2 is call 0, block 3 call 1: numbered among the calls, as OpenAI does
        ToolCallDelta(0, "toolu_1", "get_weather", ""),
        ToolCallDelta(0, arguments='{"city": '),
        ToolCallDelta(0, arguments='"Paris"}'),
        ToolCallDelta(1, "toolu_2", "get_time", ""),
        ToolCallDelta(1, arguments="{}"),
        FinishDelta("tool_calls"),
        UsageDelta(Usage(0, 6, 6)),  # message_delta: what it adds
    ]


async def test_the_request_is_translated_to_the_messages_api(
    anthropic_upstream: AnthropicUpstream,
) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    function = {"name": "get_weather", "description": "Weather now", "parameters": schema}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather here?"}, image]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("t1", "Paris"), call("t2", "Oslo")],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "t2", "content": "snow"},
        {"role": "user", "content": "And so?"},
    ]
    options = {"temperature": 0.2, "stop": "END", "user": "u-1", "seed": 7}
    options["tools"], options["tool_choice"] = (
        [{"type": "function", "function": function}],
        "required",
    )
    async with provider(anthropic_upstream, anthropic_beta="tools-2025") as claude:
        with capture_logs() as logs:
            _ = [d async for d in claude.stream("claude-local-large", messages, **options)]
    (request,) = anthropic_upstream.requests
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-test-0123456789"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["anthropic-beta"] == "tools-2025"
    assert "authorization" not in request.headers
    png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    assert request.body == {
        "model": "claude-local-large",
        "max_tokens": 4096,
        "stream": True,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"}, {"type": "image", "source": png}
            ]},
            {"role": "assistant", "content": [use("t1", "Paris"), use("t2", "Oslo")]},
            # consecutive tool results and the user's next words: one user turn
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "snow"},
                {"type": "text", "text": "And so?"},
            ]},
        ],
        "temperature": 0.2,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "tools": [{"name": "get_weather", "description": "Weather now", "input_schema": schema}],
        "tool_choice": {"type": "any"},
    }  # fmt: skip
    dropped = next(log for log in logs if log["event"] == "provider.options_dropped")
    assert dropped["options"] == ["seed"]


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "retryable"),
    [
        error(529, "overloaded_error", "Overloaded", UpstreamStatusError, True),
        error(429, "rate_limit_error", "slow", RateLimitedError, True, **{"retry-after": "7"}),
        error(401, "authentication_error", "invalid x-api-key", AuthenticationError, False),
        error(403, "permission_error", "no", AuthenticationError, False),
        error(
            400,
            "invalid_request_error",
            "prompt is too long: 250000 tokens > 200000 maximum",
            ContextLengthExceededError,
            False,
        ),
        error(404, "not_found_error", "model: claude-nope", ModelNotSupportedError, False),
    ],
)
async def test_error_answers_become_typed_errors(
    anthropic_upstream: AnthropicUpstream,
    status: int,
    body: str,
    headers: dict[str, str],
    expected: type[Exception],
    retryable: bool,
) -> None:
    anthropic_upstream.default = Script(status=status, error_body=body, headers=headers)
    async with provider(anthropic_upstream) as claude:
        with pytest.raises(expected) as caught:
            _ = [d async for d in claude.stream("claude-local-large", HI)]
    assert type(caught.value) is expected
    assert getattr(caught.value, "retryable", False) is retryable
    if expected is RateLimitedError:
        assert caught.value.retry_after == 7  # type: ignore[attr-defined]
    assert "sk-ant-test" not in str(caught.value)


async def test_an_error_event_mid_stream_is_a_retryable_failure_after_the_text(
    anthropic_upstream: AnthropicUpstream,
) -> None:
    overloaded = {"error": {"type": "overloaded_error", "message": "Overloaded"}}
    anthropic_upstream.default = Script(chunks=["Hello", overloaded], end=False)
    received: list[object] = []

    async def consume() -> None:
        async with provider(anthropic_upstream) as claude:
            async for delta in claude.stream("claude-local-large", HI):
                received.append(delta)

    with pytest.raises(UpstreamError, match="overloaded_error: Overloaded") as caught:
        await consume()
    assert received == [UsageDelta(Usage(3, 0, 3)), TextDelta("Hello")]
    assert caught.value.retryable


async def test_malformed_events_and_a_missing_stop_are_protocol_errors(
    anthropic_upstream: AnthropicUpstream,
) -> None:
    anthropic_upstream.then(
        Script(raw=b'event: content_block_delta\ndata: {"type": "content_block_delta"}\n\n'),
        Script(chunks=["Hello"], end=False),
    )
    async with provider(anthropic_upstream) as claude:
        with pytest.raises(UpstreamProtocolError, match="malformed event"):
            _ = [d async for d in claude.stream("m", HI)]
        with pytest.raises(UpstreamProtocolError, match="stream ended before event: message_stop"):
            _ = [d async for d in claude.stream("m", HI)]


async def test_models_are_discovered_from_the_models_endpoint(
    anthropic_upstream: AnthropicUpstream,
) -> None:
    anthropic_upstream.models = ["claude-a", "claude-b"]
    entry = {"name": "claude", "type": "anthropic", "base_url": anthropic_upstream.base_url}
    async with Router.from_config({"providers": [{**entry, "models": "discover"}]}) as router:
        assert router.providers[0].models == ["claude-a", "claude-b"]
        answer = await router.complete_text("claude-b", HI)
    assert answer == "Hello, world!"


async def test_a_cut_answer_is_continued_by_prefill_without_trailing_whitespace(
    anthropic_upstream: AnthropicUpstream, openai_upstream: OpenAIUpstream
) -> None:
    openai_upstream.default = Script(chunks=["The sky ", "is "], reset_after=2)
    anthropic_upstream.default = Script(chunks=[" blue", " because..."])
    oa = {"name": "oa", "type": "openai", "base_url": openai_upstream.base_url}
    claude = {"name": "claude", "type": "anthropic", "base_url": anthropic_upstream.base_url}
    config = {"providers": [{**oa, "models": ["m"]}, {**claude, "models": ["m"]}]}
    async with Router.from_config(config) as router, router.stream("m", HI) as stream:
        text = "".join([t async for t in stream])
    last = anthropic_upstream.requests[0].body["messages"][-1]
    # the API refuses a final assistant turn that ends in whitespace
    assert last == {"role": "assistant", "content": [{"type": "text", "text": "The sky is"}]}
    assert text == "The sky is blue because..."  # the space the model wrote again, once
    assert stream.status == "switched"
