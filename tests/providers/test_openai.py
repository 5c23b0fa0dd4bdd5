"""The OpenAI-compatible provider against a local server speaking the format."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from openai.types.chat import ChatCompletionChunk

from polyroute import (
    AuthenticationError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotSupportedError,
    RateLimitedError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    Usage,
)
from polyroute.core import http
from polyroute.core.deltas import Delta, FinishDelta, UsageDelta
from polyroute.providers import OpenAI
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script
from tests.upstreams.server import wait_closed

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Again?"},
]


def provider_for(server: OpenAIUpstream, **kwargs: Any) -> OpenAI:
    return OpenAI(base_url=server.base_url, **kwargs)


async def collect(provider: OpenAI, model: str = "local-large", **kwargs: Any) -> list[str]:
    return [t async for t in provider.create_async_generator(model, CHAT, **kwargs)]


async def deltas_of(provider: OpenAI, model: str = "local-large", **kwargs: Any) -> list[Delta]:
    return [d async for d in provider.stream(model, CHAT, **kwargs)]


def finish_and_usage(deltas: list[Delta]) -> tuple[str | None, Usage | None]:
    finish = [d.reason for d in deltas if isinstance(d, FinishDelta)]
    usage = [d.usage for d in deltas if isinstance(d, UsageDelta)]
    return (finish[-1] if finish else None), (usage[-1] if usage else None)


def openai_error(message: str, code: str | None = None, kind: str = "invalid_request_error") -> str:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def test_flags_declare_chat_support() -> None:
    assert OpenAI.supports_stream is True
    assert OpenAI.supports_system_message is True
    assert OpenAI.supports_message_history is True
    assert OpenAI.working is True


async def test_streams_content_deltas_and_reports_finish_and_usage(
    openai_upstream: OpenAIUpstream,
) -> None:
    async with provider_for(openai_upstream) as provider:
        assert await collect(provider) == ["Hello", ", ", "world", "!"]
        deltas = await deltas_of(provider)
    assert finish_and_usage(deltas) == ("stop", Usage(3, 4, 7))


async def test_fixture_chunks_validate_as_the_official_chunk_type(
    openai_upstream: OpenAIUpstream,
) -> None:
    async with provider_for(openai_upstream) as provider:
        await collect(provider)
    assert len(openai_upstream.sent) == 7  # role, 4 deltas, finish, usage
    for payload in openai_upstream.sent:
        ChatCompletionChunk.model_validate(payload, strict=False)
        assert ChatCompletionChunk.model_validate(payload).object == "chat.completion.chunk"


async def test_request_body_carries_messages_stream_and_sampling(
    openai_upstream: OpenAIUpstream,
) -> None:
    async with provider_for(openai_upstream, api_key="sk-test-abcdefghijkl") as provider:
        await collect(provider, temperature=0.2, max_tokens=50, top_p=0.9, stop=["\n"], seed=7)
    request = openai_upstream.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer sk-test-abcdefghijkl"
    assert request.body == {
        "model": "local-large",
        "messages": CHAT,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "max_tokens": 50,
        "top_p": 0.9,
        "stop": ["\n"],
        "seed": 7,
    }
    assert "abcdefghijkl" not in repr(provider)


async def test_include_usage_can_be_turned_off(openai_upstream: OpenAIUpstream) -> None:
    async with provider_for(openai_upstream, include_usage=False) as provider:
        deltas = await deltas_of(provider)
    assert "stream_options" not in openai_upstream.requests[0].body
    assert finish_and_usage(deltas) == ("stop", None)


async def test_unknown_parameter_is_an_invalid_request(openai_upstream: OpenAIUpstream) -> None:
    async with provider_for(openai_upstream) as provider:
        with pytest.raises(InvalidRequestError, match="temprature"):
            await collect(provider, temprature=1)
    assert openai_upstream.requests == []


@pytest.mark.parametrize(
    ("status", "body", "kind", "retryable"),
    [
        (
            401,
            openai_error("Incorrect API key provided", "invalid_api_key"),
            AuthenticationError,
            False,
        ),
        (403, openai_error("Forbidden"), AuthenticationError, False),
        (
            404,
            openai_error("The model `x` does not exist", "model_not_found"),
            ModelNotSupportedError,
            None,
        ),
        (
            400,
            openai_error("maximum context length is 8192 tokens", "context_length_exceeded"),
            ContextLengthExceededError,
            False,
        ),
        (
            429,
            openai_error("Rate limit reached", "rate_limit_exceeded", "requests"),
            RateLimitedError,
            True,
        ),
        (
            429,
            openai_error("You exceeded your current quota", "insufficient_quota"),
            RateLimitedError,
            False,
        ),
        (
            500,
            openai_error("The server had an error", None, "server_error"),
            UpstreamStatusError,
            True,
        ),
        (503, "<html>bad gateway</html>", UpstreamStatusError, True),
    ],
)
async def test_error_bodies_map_to_typed_errors(
    openai_upstream: OpenAIUpstream,
    status: int,
    body: str,
    kind: type[Exception],
    retryable: bool | None,
) -> None:
    openai_upstream.default = Script(status=status, error_body=body, headers={"Retry-After": "4"})
    async with provider_for(openai_upstream) as provider:
        with pytest.raises(kind) as caught:
            await collect(provider)
    assert type(caught.value) is kind
    if retryable is not None:
        assert caught.value.retryable is retryable  # type: ignore[attr-defined]
    if kind is RateLimitedError and retryable:
        assert caught.value.retry_after == 4.0  # type: ignore[attr-defined]


async def test_bare_404_stays_a_status_error(openai_upstream: OpenAIUpstream) -> None:
    openai_upstream.default = Script(status=404, error_body="Not Found")
    async with provider_for(openai_upstream) as provider:
        with pytest.raises(UpstreamStatusError) as caught:
            await collect(provider)
    assert caught.value.status == 404


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            {"message": "This model's maximum context length is 4096 tokens", "code": None},
            ContextLengthExceededError,
        ),
        ({"message": "Provider returned error", "code": 502}, UpstreamStatusError),
        ({"message": "overloaded", "type": "server_error"}, UpstreamError),
        ("plain string error", UpstreamError),
    ],
)
async def test_error_object_inside_the_stream_raises_typed_error(
    openai_upstream: OpenAIUpstream, error: object, kind: type[Exception]
) -> None:
    body = b'data: {"choices": [{"index": 0, "delta": {"content": "par"}}]}\n\n'
    body += b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
    openai_upstream.default = Script(raw=body)
    received: list[str] = []

    async def consume(provider: OpenAI) -> None:
        async for text in provider.create_async_generator("local-large", CHAT):
            received.append(text)

    async with provider_for(openai_upstream) as provider:
        with pytest.raises(kind) as caught:
            await consume(provider)
    assert type(caught.value) is kind
    assert received == ["par"]


@pytest.mark.parametrize(
    "line",
    [
        b"data: {oops}",
        b'data: {"id": "x"}',
        b'data: {"choices": "nope"}',
        b'data: {"choices": [5]}',
        b"data: 12",
    ],
)
async def test_malformed_chunks_are_protocol_errors(
    openai_upstream: OpenAIUpstream, line: bytes
) -> None:
    openai_upstream.default = Script(raw=line + b"\n\n")
    async with provider_for(openai_upstream) as provider:
        with pytest.raises(UpstreamProtocolError, match="malformed chunk"):
            await collect(provider)


async def test_null_choices_usage_chunk_is_accepted(openai_upstream: OpenAIUpstream) -> None:
    choice = b'{"index": 0, "delta": {"content": "ok"}, "finish_reason": "length"}'
    body = b'data: {"choices": [' + choice + b"]}\n\n"
    body += b'data: {"choices": null, "usage": {"total_tokens": 2}}\n\ndata: [DONE]\n\n'
    openai_upstream.default = Script(raw=body)
    async with provider_for(openai_upstream) as provider:
        assert await collect(provider) == ["ok"]
        deltas = await deltas_of(provider)
    assert finish_and_usage(deltas) == ("length", Usage(0, 0, 2))


async def test_missing_done_is_reported(openai_upstream: OpenAIUpstream) -> None:
    openai_upstream.default = Script(chunks=["a"], end=False)
    async with provider_for(openai_upstream) as provider:
        with pytest.raises(UpstreamProtocolError, match=r"stream ended before data: \[DONE\]"):
            await collect(provider)


async def test_models_are_discovered_from_the_models_endpoint(
    openai_upstream: OpenAIUpstream,
) -> None:
    async with provider_for(openai_upstream) as provider:
        assert await provider.discover_models() == ["local-large", "local-small"]
        assert provider.get_model("local-small") == "local-small"
        with pytest.raises(ModelNotSupportedError):
            provider.get_model("gpt-4o")


def test_base_url_sets_the_endpoint_and_an_explicit_endpoint_wins() -> None:
    assert (
        OpenAI(base_url="http://127.0.0.1:1/v1/").api_endpoint
        == "http://127.0.0.1:1/v1/chat/completions"
    )
    explicit = OpenAI(base_url="http://h/v1", api_endpoint="http://h/custom")
    assert explicit.api_endpoint == "http://h/custom"


# How independently written servers say "no such model" (each an error body they send).
UNKNOWN_MODEL_BODIES = [
    pytest.param(
        400,
        '{"error": {"message": "Invalid model name passed in model=local-large. Call '
        '`/v1/models` to view available models for your key.", "type": "invalid_request_error",'
        ' "param": "model", "code": "400"}}',
        id="litellm",
    ),
    pytest.param(
        404,
        '{"object": "error", "message": "The model `local-large` does not exist.", '
        '"type": "NotFoundError", "param": null, "code": 404}',
        id="vllm",
    ),
    pytest.param(
        404,
        '{"error": {"message": "model \\"local-large\\" not found, try pulling it first", '
        '"type": "api_error", "param": null, "code": null}}',
        id="ollama",
    ),
    pytest.param(
        400,
        '{"error": {"message": "local-large is not a valid model ID", "code": 400}}',
        id="openrouter",
    ),
    pytest.param(
        404,
        '{"error": {"message": "The model `local-large` does not exist or you do not have '
        'access to it.", "type": "invalid_request_error", "code": "model_not_found"}}',
        id="groq",
    ),
    pytest.param(
        404,
        '{"error": {"message": "Unable to access model local-large. Please visit the models '
        'page.", "type": "invalid_request_error", "param": null, "code": "model_not_available"}}',
        id="together",
    ),
]


@pytest.mark.parametrize(("status", "body"), UNKNOWN_MODEL_BODIES)
async def test_unknown_model_bodies_of_other_servers_are_model_not_supported(
    openai_upstream: OpenAIUpstream, status: int, body: str
) -> None:
    openai_upstream.default = Script(status=status, error_body=body)
    async with provider_for(openai_upstream) as provider:
        with pytest.raises(ModelNotSupportedError) as caught:
            await collect(provider)
    assert caught.value.provider == "openai"
    assert caught.value.model == "local-large"


@pytest.mark.parametrize(
    "body",
    [
        '{"error": {"message": "slow down", "code": "429"}}',
        '{"error": {"message": "slow down", "code": 429}}',
        '{"object": "error", "message": "slow down", "code": 429}',
    ],
)
async def test_a_code_of_429_is_a_rate_limit_whether_string_or_number(
    openai_upstream: OpenAIUpstream, body: str
) -> None:
    openai_upstream.default = Script(status=400, error_body=body)
    async with provider_for(openai_upstream) as provider:
        with pytest.raises(RateLimitedError):
            await collect(provider)
    raw = b"data: " + body.encode() + b"\n\n"
    openai_upstream.default = Script(raw=raw)
    async with provider_for(openai_upstream) as provider:
        with pytest.raises(RateLimitedError):
            await collect(provider)


async def test_a_tools_message_about_the_model_is_not_taken_for_an_unknown_model(
    openai_upstream: OpenAIUpstream,
) -> None:
    body = openai_error("tools are not supported by this model", None)
    openai_upstream.default = Script(status=400, error_body=body)
    async with provider_for(openai_upstream) as provider:
        with pytest.raises(UpstreamStatusError) as caught:
            await collect(provider)
    assert type(caught.value) is UpstreamStatusError


async def tails_read() -> None:
    """Wait for the background reads of answers' last bytes (see core/http.AnswerEnd)."""
    await asyncio.gather(*list(http._reading_tails))


async def test_connection_is_kept_when_the_body_ends_after_the_end_event(
    openai_upstream: OpenAIUpstream,
) -> None:
    # A paced upstream sends data: [DONE], pauses, then ends the body: the answer is
    # delivered at [DONE], and the connection still serves the next request.
    openai_upstream.default = Script(delay=0.05)
    async with provider_for(openai_upstream) as provider:
        for _ in range(3):
            assert finish_and_usage(await deltas_of(provider))[0] == "stop"
            await tails_read()
    peers = {record.peer for record in openai_upstream.requests}
    assert len(openai_upstream.requests) == 3
    assert len(peers) == 1
    assert all(record.completed for record in openai_upstream.requests)


async def test_a_tail_that_never_ends_costs_its_connection(
    openai_upstream: OpenAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "_TAIL_SECONDS", 0.05)
    openai_upstream.default = Script(stall_after_end=True)
    async with provider_for(openai_upstream) as provider:
        for _ in range(2):
            assert finish_and_usage(await deltas_of(provider))[0] == "stop"
            await tails_read()
            await wait_closed(openai_upstream.requests[-1])
    first, second = openai_upstream.requests
    assert not first.completed
    assert first.peer != second.peer


async def test_a_tail_whose_connection_closed_under_it_ends_quietly(
    openai_upstream: OpenAIUpstream,
) -> None:
    # The provider closed as soon as its answer is read (a gateway stopping): its
    # session closes the connection before the tail's reader first reads it, which
    # aiohttp answers with RuntimeError("Connection closed."), not an error of its own.
    openai_upstream.default = Script(stall_after_end=True)
    async with provider_for(openai_upstream) as provider:
        assert finish_and_usage(await deltas_of(provider))[0] == "stop"
        tails = list(http._reading_tails)
    assert len(tails) == 1
    await asyncio.gather(*tails)  # raises what a tail's reader raised
    assert not http._reading_tails


async def test_a_stream_whose_provider_closed_under_it_raises_a_connection_error(
    openai_upstream: OpenAIUpstream,
) -> None:
    # aiohttp reads a connection its session closed with RuntimeError("Connection
    # closed."): the consumer gets the typed error a dropped connection gives.
    openai_upstream.default = Script(chunks=["a"] * 50, delay=0.02)
    provider = provider_for(openai_upstream)
    async with provider:
        stream = provider.stream("local-large", CHAT)
        await anext(stream)
    with pytest.raises(UpstreamConnectionError, match="closed under the answer"):
        async for _delta in stream:
            pass


async def test_a_whole_answer_whose_session_closed_under_it_raises_a_connection_error(
    openai_upstream: OpenAIUpstream,
) -> None:
    # The session closed between the answer's head and its body (here by a trace
    # hook, as a provider closed at that moment would): the typed error, not aiohttp's
    # RuntimeError.
    openai_upstream.default = Script(chunks=["a"] * 20, delay=0.02)
    trace = aiohttp.TraceConfig()

    async def close_at_head(session: aiohttp.ClientSession, *_: object) -> None:
        await session.close()

    trace.on_request_end.append(close_at_head)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        with pytest.raises(UpstreamConnectionError, match="closed under the answer"):
            await http.fetch_answer(
                session,
                f"{openai_upstream.base_url}/chat/completions",
                provider="openai",
                body={"model": "local-large", "messages": CHAT, "stream": True},
            )


async def test_an_answer_closed_before_its_end_closes_the_connection_at_once(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.default = Script(chunks=["a"] * 50, delay=0.02)
    async with provider_for(openai_upstream) as provider:
        stream = provider.stream("local-large", CHAT)
        await anext(stream)
        await stream.aclose()
        assert not http._reading_tails
        await wait_closed(openai_upstream.requests[0])
    assert not openai_upstream.requests[0].completed
