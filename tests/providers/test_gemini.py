"""The native Gemini provider against a local server speaking streamGenerateContent,
which the official google-genai SDK reads first to prove it speaks the real format."""

from __future__ import annotations

import json

import pytest
from google import genai
from google.genai import types

from polyroute import (
    AuthenticationError,
    ContextLengthExceededError,
    ExtraDelta,
    FinishDelta,
    ModelNotSupportedError,
    RateLimitedError,
    ReasoningDelta,
    Router,
    TextDelta,
    ToolCallDelta,
    UpstreamProtocolError,
    UpstreamStatusError,
    Usage,
    UsageDelta,
)
from polyroute.providers import Gemini
from tests.upstreams.gemini import GeminiUpstream, gemini_error
from tests.upstreams.scripted import Script

HI = [{"role": "user", "content": "Hi"}]
TOO_LONG = "The input token count (2000000) exceeds the maximum number of tokens allowed."
WEATHER = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}


def provider(server: GeminiUpstream) -> Gemini:
    return Gemini(base_url=server.base_url, api_key="AIza-test-0123456789")


def error(
    code: int, status: str, message: str, expected: type[Exception], retryable: bool
) -> object:
    return pytest.param(code, gemini_error(code, status, message), expected, retryable, id=status)


async def test_the_official_sdk_reads_the_local_server(gemini_upstream: GeminiUpstream) -> None:
    gemini_upstream.default = Script(chunks=[{"thought": "hmm"}, "Hello, ", "world!", WEATHER])
    options = types.HttpOptions(base_url=gemini_upstream.base_url, api_version="v1beta")
    client = genai.Client(api_key="k", http_options=options)
    stream = await client.aio.models.generate_content_stream(
        model="gemini-local-pro", contents="Hi"
    )
    chunks = [chunk async for chunk in stream]
    await client.aio.aclose()
    text = "".join(
        part.text
        for chunk in chunks
        for part in chunk.candidates[0].content.parts  # type: ignore[index,union-attr]
        if part.text and not part.thought
    )
    calls = [c.function_calls[0] for c in chunks if c.function_calls]
    assert text == "Hello, world!"
    assert (calls[0].name, calls[0].args) == ("get_weather", {"city": "Paris"})
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
    assert chunks[-1].usage_metadata.total_token_count == 7  # type: ignore[union-attr]
    (request,) = gemini_upstream.requests
    assert request.path == "/v1beta/models/gemini-local-pro:streamGenerateContent"


async def test_text_thoughts_calls_and_usage_become_deltas(gemini_upstream: GeminiUpstream) -> None:
    clock = {"functionCall": {"id": "fc-7", "name": "get_time", "args": {}}}
    gemini_upstream.default = Script(chunks=[{"thought": "hmm"}, "Two calls", WEATHER, clock])
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    async with provider(gemini_upstream) as gemini:
        deltas = [d async for d in gemini.stream("gemini-local-pro", HI, tools=tools)]
    assert deltas == [
        ReasoningDelta("hmm"),
        TextDelta("Two calls"),
        # Gemini sends each call whole: one fragment per call, the arguments as JSON
        ToolCallDelta(0, "call_0", "get_weather", '{"city": "Paris"}'),
        ToolCallDelta(1, "fc-7", "get_time", "{}"),
        FinishDelta("stop"),
        UsageDelta(Usage(3, 4, 7)),
    ]
    (request,) = gemini_upstream.requests
    assert request.headers["x-goog-api-key"] == "AIza-test-0123456789"
    assert "authorization" not in request.headers
    assert request.path == "/v1beta/models/gemini-local-pro:streamGenerateContent"


async def test_the_request_is_translated_to_generate_content(
    gemini_upstream: GeminiUpstream,
) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    function = {"name": "get_weather", "description": "Weather now", "parameters": schema}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}, image]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"sky": "clear"}'},
        {"role": "user", "content": "So?"},
    ]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    response_format = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}
    options = {"temperature": 0.3, "max_tokens": 50, "stop": "END", "top_p": 0.9, "logprobs": True}
    async with provider(gemini_upstream) as gemini:
        stream = gemini.stream(
            "gemini-local-pro",
            messages,
            tools=[{"type": "function", "function": function}],
            tool_choice=choice,
            response_format=response_format,
            **options,
        )
        _ = [d async for d in stream]
    png = {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    asked = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    answered = {"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}}
    only_weather = {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    assert gemini_upstream.requests[0].body == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Weather?"}, png]},
            {"role": "model", "parts": [asked]},
            # the tool result, named after the call it answers, and the next user words
            {"role": "user", "parts": [answered, {"text": "So?"}]},
        ],
        "generationConfig": {
            "temperature": 0.3,
            "maxOutputTokens": 50,
            "stopSequences": ["END"],
            "topP": 0.9,
            "responseMimeType": "application/json",
            "responseSchema": schema,
        },
        "tools": [{"functionDeclarations": [function]}],
        "toolConfig": {"functionCallingConfig": only_weather},
    }


async def test_a_safety_stop_is_a_content_filter_outcome_not_a_plain_stop(
    gemini_upstream: GeminiUpstream,
) -> None:
    gemini_upstream.default = Script(chunks=["Here is how", {"finishReason": "SAFETY"}], end=False)
    async with (
        Router.from_config(
            {"providers": [{"name": "g", "type": "gemini", "base_url": gemini_upstream.base_url}]}
        ) as router,
        router.stream("gemini-local-pro", HI) as stream,
    ):
        deltas = [d async for d in stream.deltas()]
    assert stream.finish_reason == "content_filter"
    assert stream.text == "Here is how"
    (facts,) = [d.fields["gemini_finish"] for d in deltas if isinstance(d, ExtraDelta)]
    assert facts["finishReason"] == "SAFETY"
    assert facts["safetyRatings"][0]["probability"] == "HIGH"


@pytest.mark.parametrize(
    ("code", "body", "expected", "retryable"),
    [
        error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", RateLimitedError, True),
        error(503, "UNAVAILABLE", "The model is overloaded", UpstreamStatusError, True),
        error(500, "INTERNAL", "oops", UpstreamStatusError, True),
        error(403, "PERMISSION_DENIED", "denied", AuthenticationError, False),
        error(400, "INVALID_ARGUMENT", "API key not valid.", AuthenticationError, False),
        error(400, "INVALID_ARGUMENT", TOO_LONG, ContextLengthExceededError, False),
        error(404, "NOT_FOUND", "models/nope is not found", ModelNotSupportedError, False),
        error(400, "INVALID_ARGUMENT", "Invalid JSON payload", UpstreamStatusError, False),
    ],
)
async def test_error_answers_become_typed_errors(
    gemini_upstream: GeminiUpstream,
    code: int,
    body: str,
    expected: type[Exception],
    retryable: bool,
) -> None:
    gemini_upstream.default = Script(status=code, error_body=body)
    async with provider(gemini_upstream) as gemini:
        with pytest.raises(expected) as caught:
            _ = [d async for d in gemini.stream("gemini-local-pro", HI)]
    assert type(caught.value) is expected
    assert getattr(caught.value, "retryable", False) is retryable
    assert "AIza-test" not in str(caught.value)


async def test_an_error_inside_the_stream_and_malformed_chunks(
    gemini_upstream: GeminiUpstream,
) -> None:
    unavailable = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}
    gemini_upstream.then(
        Script(chunks=["Hello", unavailable], end=False),
        Script(raw=b'data: {"candidates": [{"content": {"parts": [{"text": 5}]}}]}\n\n'),
        Script(chunks=["Hello"], end=False),
    )
    async with provider(gemini_upstream) as gemini:
        received: list[object] = []

        async def consume() -> None:
            async for delta in gemini.stream("m", HI):
                received.append(delta)

        with pytest.raises(UpstreamStatusError, match="UNAVAILABLE") as caught:
            await consume()
        assert received == [TextDelta("Hello")]
        assert caught.value.retryable
        with pytest.raises(UpstreamProtocolError, match="malformed chunk"):
            _ = [d async for d in gemini.stream("m", HI)]
        with pytest.raises(UpstreamProtocolError, match="before a chunk with a finishReason"):
            _ = [d async for d in gemini.stream("m", HI)]


async def test_models_are_discovered_and_only_generators_kept(
    gemini_upstream: GeminiUpstream,
) -> None:
    entry = {
        "name": "g",
        "type": "gemini",
        "base_url": gemini_upstream.base_url,
        "models": "discover",
    }
    async with Router.from_config({"providers": [entry]}) as router:
        assert router.providers[0].models == ["gemini-local-flash", "gemini-local-pro"]
        answer = await router.complete_text("gemini-local-flash", HI)
    assert answer == "Hello, world!"
    assert json.loads(json.dumps(gemini_upstream.requests[-1].body))["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}]}
    ]


async def test_a_blocked_prompt_ends_the_answer_as_content_filter(
    gemini_upstream: GeminiUpstream,
) -> None:
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "modelVersion": "gemini-local"}
    types.GenerateContentResponse.model_validate(blocked)  # the real shape
    gemini_upstream.default = Script(raw=b"data: " + json.dumps(blocked).encode() + b"\n\n")
    async with provider(gemini_upstream) as gemini:
        deltas = [d async for d in gemini.stream("gemini-local-pro", HI)]
    assert deltas == [
        FinishDelta("content_filter"),
        ExtraDelta({"gemini_prompt_feedback": {"blockReason": "SAFETY"}}),
    ]
