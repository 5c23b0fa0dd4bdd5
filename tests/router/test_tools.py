"""Tool calls, reasoning and other structured deltas through the router, over local
OpenAI-format upstreams; and what happens when an upstream dies inside a tool call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk
from structlog.testing import capture_logs

from polyroute import (
    FinishDelta,
    ReasoningDelta,
    Router,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallInterruptedError,
    UsageDelta,
)
from tests.router.helpers import HI
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Chunk, Script

pytestmark = pytest.mark.usefixtures("chunk_path")  # decoded, and relayed as it came

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
WEATHER_CALL = ToolCall("call_w", "get_weather", '{"city": "Paris"}')
TIME_CALL = ToolCall("call_t", "get_time", '{"zone": "CET"}')


def call_start(index: int, call: ToolCall) -> dict[str, Any]:
    function = {"name": call.name, "arguments": ""}
    return {
        "tool_calls": [{"index": index, "id": call.id, "type": "function", "function": function}]
    }


def call_piece(index: int, piece: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}


def streamed(index: int, call: ToolCall, size: int = 4) -> list[Chunk]:
    """``call`` as OpenAI streams it: id and name first, then its arguments in pieces."""
    pieces = [call.arguments[i : i + size] for i in range(0, len(call.arguments), size)]
    return [call_start(index, call), *(call_piece(index, piece) for piece in pieces)]


def tool_script(*chunks: Chunk, **fields: Any) -> Script:
    return Script(chunks=chunks, finish_reason="tool_calls", **fields)


@pytest.fixture
async def backup() -> AsyncIterator[OpenAIUpstream]:
    server = await OpenAIUpstream().start()
    yield server
    await server.stop()


def entry(name: str, server: OpenAIUpstream, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "base_url": server.base_url, **extra}


def router(*entries: dict[str, Any], **settings: Any) -> Router:
    return Router.from_config({"providers": list(entries), "retry": {"attempts": 1}, **settings})


async def deltas_of(router: Router, **options: Any) -> tuple[list[Any], Any]:
    async with router, router.stream("local-large", HI, tools=TOOLS, **options) as stream:
        deltas = [delta async for delta in stream.deltas()]
    return deltas, stream


async def test_fragments_assemble_into_one_call_with_one_json_argument_string(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.default = tool_script(*streamed(0, WEATHER_CALL, size=3))
    r = router(entry("a", openai_upstream))
    async with r, r.stream("local-large", HI, tools=TOOLS, tool_choice="auto") as stream:
        texts = [text async for text in stream]
    assert texts == []  # text iteration carries text only
    assert stream.message.content is None
    assert stream.message.tool_calls == [WEATHER_CALL]
    assert stream.message.as_dict()["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert stream.finish_reason == "tool_calls"
    assert stream.status == "complete"
    body = openai_upstream.requests[0].body
    assert (body["tools"], body["tool_choice"]) == (TOOLS, "auto")
    for payload in openai_upstream.sent:
        ChatCompletionChunk.model_validate(payload)


async def test_deltas_carry_each_fragment_then_finish_and_usage(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.default = tool_script("Let me check.", *streamed(0, WEATHER_CALL, size=8))
    deltas, stream = await deltas_of(router(entry("a", openai_upstream)))
    fragments = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert deltas[0] == TextDelta("Let me check.")
    assert (fragments[0].id, fragments[0].name, fragments[0].arguments) == (
        "call_w",
        "get_weather",
        "",
    )
    assert "".join(f.arguments for f in fragments) == WEATHER_CALL.arguments
    assert {f.index for f in fragments} == {0}
    assert [type(d) for d in deltas[-2:]] == [FinishDelta, UsageDelta]
    assert stream.message.content == "Let me check."
    assert stream.usage is not None
    assert stream.usage.total_tokens == 7


async def test_parallel_calls_interleaved_by_index_are_kept_apart(
    openai_upstream: OpenAIUpstream,
) -> None:
    weather, clock = streamed(0, WEATHER_CALL), streamed(1, TIME_CALL)
    interleaved = [weather[0], clock[0]]
    for pair in zip(weather[1:], clock[1:], strict=False):
        interleaved += pair
    interleaved += weather[len(clock) :] + clock[len(weather) :]
    openai_upstream.default = tool_script(*interleaved)
    deltas, stream = await deltas_of(router(entry("a", openai_upstream)), parallel_tool_calls=True)
    assert stream.message.tool_calls == [WEATHER_CALL, TIME_CALL]
    assert openai_upstream.requests[0].body["parallel_tool_calls"] is True
    indices = [d.index for d in deltas if isinstance(d, ToolCallDelta)]
    assert indices[:4] == [0, 1, 0, 1]


async def test_reasoning_from_both_field_names_is_surfaced(openai_upstream: OpenAIUpstream) -> None:
    openai_upstream.default = Script(
        chunks=[{"reasoning_content": "Think"}, {"reasoning": " harder."}, "Answer."]
    )
    deltas, stream = await deltas_of(router(entry("a", openai_upstream)))
    assert [d for d in deltas if isinstance(d, ReasoningDelta)] == [
        ReasoningDelta("Think"),
        ReasoningDelta(" harder."),
    ]
    assert (stream.message.reasoning, stream.message.content) == ("Think harder.", "Answer.")


async def test_unknown_delta_fields_are_kept_on_the_message(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.default = Script(chunks=[{"refusal": "I can"}, {"refusal": "not."}])
    _deltas, stream = await deltas_of(router(entry("a", openai_upstream)))
    assert stream.message.extra == {"refusal": "I cannot."}


async def test_stream_mode_never_splices_a_call_that_reached_the_consumer(
    openai_upstream: OpenAIUpstream, backup: OpenAIUpstream
) -> None:
    chunks = ["Checking.", *streamed(0, WEATHER_CALL, size=5)]
    openai_upstream.default = tool_script(*chunks, reset_after=3)
    r = router(entry("a", openai_upstream), entry("b", backup))
    stream = r.stream("local-large", HI, tools=TOOLS)
    received: list[Any] = []

    async def consume() -> None:
        async with r, stream:
            async for delta in stream.deltas():
                received.append(delta)

    with pytest.raises(ToolCallInterruptedError) as caught:
        await consume()
    assert stream.status == "truncated"
    assert caught.value.__cause__ is not None
    assert "cannot be continued elsewhere" in str(caught.value)
    assert backup.requests == []
    (partial,) = caught.value.delivered.tool_calls
    assert (partial.name, partial.arguments) == ("get_weather", '{"cit')
    assert caught.value.delivered.content == "Checking."
    assert sum(isinstance(d, ToolCallDelta) for d in received) == 2


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(3, id="inside-the-arguments"),
        pytest.param(len(streamed(0, WEATHER_CALL)), id="between-two-parallel-calls"),
        pytest.param(
            len(streamed(0, WEATHER_CALL)) + len(streamed(1, TIME_CALL)),
            id="after-the-last-call-before-finish",
        ),
    ],
)
async def test_atomic_mode_relays_a_death_inside_calls_and_delivers_each_once(
    openai_upstream: OpenAIUpstream, backup: OpenAIUpstream, cut: int
) -> None:
    calls = [*streamed(0, WEATHER_CALL), *streamed(1, TIME_CALL)]
    openai_upstream.default = tool_script(*calls, reset_after=cut)
    backup.default = tool_script(*calls)
    deltas, stream = await deltas_of(
        router(entry("a", openai_upstream), entry("b", backup), tool_calls="atomic")
    )
    fragments = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert [(f.index, f.id, f.name, f.arguments) for f in fragments] == [
        (0, "call_w", "get_weather", WEATHER_CALL.arguments),
        (1, "call_t", "get_time", TIME_CALL.arguments),
    ]
    assert deltas.index(fragments[-1]) < deltas.index(FinishDelta("tool_calls"))
    assert stream.message.tool_calls == [WEATHER_CALL, TIME_CALL]
    assert [a.outcome for a in stream.attempts] == ["failed", "ok"]
    assert (stream.status, stream.provider) == ("complete", "b")


async def test_atomic_mode_continues_the_text_before_a_cut_call(
    openai_upstream: OpenAIUpstream, backup: OpenAIUpstream
) -> None:
    openai_upstream.default = tool_script("Checking the", *streamed(0, WEATHER_CALL), reset_after=3)
    backup.default = tool_script("Checking the", " weather.", *streamed(0, WEATHER_CALL))
    with capture_logs() as logs:
        deltas, stream = await deltas_of(
            router(entry("a", openai_upstream), entry("b", backup), tool_calls="atomic")
        )
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == "Checking the weather."
    assert stream.message.tool_calls == [WEATHER_CALL]
    assert stream.status == "switched"
    continued = backup.requests[0].body
    assert continued["tools"] == TOOLS
    assert continued["messages"][-2] == {"role": "assistant", "content": "Checking the"}
    assert any(log["event"] == "route.relay" for log in logs)


async def test_atomic_mode_refuses_arguments_that_are_not_json(
    openai_upstream: OpenAIUpstream, backup: OpenAIUpstream
) -> None:
    broken = ToolCall("call_x", "get_weather", '{"city": "Par')
    openai_upstream.default = tool_script(*streamed(0, broken))
    backup.default = tool_script(*streamed(0, WEATHER_CALL))
    _deltas, stream = await deltas_of(
        router(entry("a", openai_upstream), entry("b", backup), tool_calls="atomic")
    )
    assert stream.message.tool_calls == [WEATHER_CALL]
    assert "not JSON" in str(stream.attempts[0].error)


async def test_an_entry_can_hold_calls_back_while_the_route_streams_them(
    openai_upstream: OpenAIUpstream, backup: OpenAIUpstream
) -> None:
    openai_upstream.default = tool_script(*streamed(0, WEATHER_CALL), reset_after=2)
    backup.default = tool_script(*streamed(0, WEATHER_CALL))
    r = router(entry("a", openai_upstream, tool_calls="atomic"), entry("b", backup))
    _deltas, stream = await deltas_of(r)
    assert stream.message.tool_calls == [WEATHER_CALL]


async def test_tool_results_go_back_in_the_conversation(openai_upstream: OpenAIUpstream) -> None:
    conversation = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL.as_dict()]},
        {"role": "tool", "tool_call_id": "call_w", "content": '{"celsius": 21}'},
    ]
    async with router(entry("a", openai_upstream)) as r:
        message = await r.complete("local-large", conversation, tools=TOOLS)
    assert message.content == "Hello, world!"
    sent = openai_upstream.requests[0].body["messages"]
    assert sent[1] == conversation[1]
    assert sent[2] == conversation[2]


async def test_atomic_mode_passes_a_call_without_arguments(
    openai_upstream: OpenAIUpstream,
) -> None:
    no_arguments = ToolCall("call_n", "get_time", "")
    openai_upstream.default = tool_script(call_start(0, no_arguments))
    _deltas, stream = await deltas_of(router(entry("a", openai_upstream), tool_calls="atomic"))
    assert stream.message.tool_calls == [no_arguments]
    assert stream.status == "complete"
