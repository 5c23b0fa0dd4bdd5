"""Custom tools (free-form text input, such as Codex's ``apply_patch``) across wire
formats: the definition each upstream receives, a conversation's custom calls sent
back, OpenAI's streamed ``custom.input`` read as the arguments ``{"input": "<text>"}``,
and the options each provider type drops, reported once."""

from __future__ import annotations

import json
from typing import Any

from anthropic.types import ToolParam
from google.genai import types as genai_types
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionAssistantMessageParam, ChatCompletionCustomToolParam
from pydantic import TypeAdapter
from structlog.testing import capture_logs

from polyroute import FinishDelta, ToolCallDelta
from polyroute.core.deltas import Delta
from polyroute.core.request import ChatRequest
from polyroute.core.sse import OpenAIChunkEncoder, SSEEvent
from polyroute.providers import Anthropic, DarkAI, Gemini, OpenAI
from polyroute.providers.simulated import Simulated
from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.gemini import GeminiUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

HI = [{"role": "user", "content": "Fix the typo."}]
GRAMMAR = 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF'
APPLY_PATCH = {
    "type": "custom",
    "custom": {
        "name": "apply_patch",
        "description": "Edit files with a patch.",
        "format": {"type": "grammar", "grammar": {"syntax": "lark", "definition": GRAMMAR}},
    },
}
SHELL = {"type": "function", "function": {"name": "shell", "parameters": {"type": "object"}}}
FORCE_PATCH = {"type": "custom", "custom": {"name": "apply_patch"}}
# Quotes, backslashes, newlines, a tab, non-ASCII and a line separator: all must survive.
PATCH = '*** Begin Patch\n*** Update File: a "b".py\n-x = "\\n"\n+x = "\\t"\té ✓ 🙂\u2028\n*** End'
INPUT_ONLY = {
    "type": "object",
    "properties": {
        "input": {"type": "string", "description": "The tool's input, as free-form text."}
    },
    "required": ["input"],
}
DESCRIPTION = f"Edit files with a patch.\n\nThe input must match this Lark grammar:\n{GRAMMAR}"


def history(arguments: str) -> list[dict[str, Any]]:
    """A conversation where the assistant called apply_patch (with ``arguments``) and
    shell, and both answered."""
    patch_call = {
        "id": "call_p",
        "type": "function",
        "function": {"name": "apply_patch", "arguments": arguments},
    }
    shell_call = {
        "id": "call_s",
        "type": "function",
        "function": {"name": "shell", "arguments": '{"cmd": "ls"}'},
    }
    return [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [patch_call, shell_call]},
        {"role": "tool", "tool_call_id": "call_p", "content": "Done!"},
        {"role": "tool", "tool_call_id": "call_s", "content": "a.py"},
    ]


def joined_calls(deltas: list[Delta]) -> dict[int, dict[str, Any]]:
    """Each tool call's id, name and whole arguments, as a consumer adds them up."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        if isinstance(delta, ToolCallDelta):
            call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            call["id"] = call["id"] or delta.id
            call["name"] = call["name"] or delta.name
            call["arguments"] += delta.arguments
    return calls


def custom_fragment(index: int, text: str, **first: Any) -> dict[str, Any]:
    """A ``tool_calls`` delta with one custom call fragment; ``first`` adds id and name."""
    call: dict[str, Any] = {"index": index, "custom": {"input": text}}
    if first:
        call |= {"id": first["id"], "type": "custom"}
        call["custom"] = {"name": first["name"], "input": text}
    return {"tool_calls": [call]}


# OpenAI: custom tools go as they are ---------------------------------------------------


async def test_openai_receives_custom_tools_and_a_custom_tool_choice_as_given(
    openai_upstream: OpenAIUpstream,
) -> None:
    tools = [APPLY_PATCH, SHELL]
    async with OpenAI(base_url=openai_upstream.base_url) as provider:
        _ = [
            d
            async for d in provider.stream("local-large", HI, tools=tools, tool_choice=FORCE_PATCH)
        ]
    body = openai_upstream.requests[0].body
    assert body["tools"] == tools
    assert body["tool_choice"] == FORCE_PATCH
    TypeAdapter(ChatCompletionCustomToolParam).validate_python(body["tools"][0], strict=True)


async def test_openai_history_sends_calls_of_a_custom_tool_in_the_custom_shape(
    openai_upstream: OpenAIUpstream,
) -> None:
    async with OpenAI(base_url=openai_upstream.base_url) as provider:
        arguments = json.dumps({"input": PATCH})
        _ = [
            d
            async for d in provider.stream(
                "local-large", history(arguments), tools=[APPLY_PATCH, SHELL]
            )
        ]
        # Arguments outside the {"input": ...} convention are sent as the text itself.
        _ = [
            d
            async for d in provider.stream("local-large", history("raw text"), tools=[APPLY_PATCH])
        ]
        # With no custom tool declared, a call is a function call, whatever its name.
        _ = [d async for d in provider.stream("local-large", history(arguments), tools=[SHELL])]
    first, raw, undeclared = (request.body["messages"] for request in openai_upstream.requests)
    assistant = first[1]
    assert assistant["tool_calls"] == [
        {"id": "call_p", "type": "custom", "custom": {"name": "apply_patch", "input": PATCH}},
        {
            "id": "call_s",
            "type": "function",
            "function": {"name": "shell", "arguments": '{"cmd": "ls"}'},
        },
    ]
    TypeAdapter(ChatCompletionAssistantMessageParam).validate_python(assistant)
    assert first[2:] == [
        {"role": "tool", "tool_call_id": "call_p", "content": "Done!"},
        {"role": "tool", "tool_call_id": "call_s", "content": "a.py"},
    ]
    assert raw[1]["tool_calls"][0]["custom"] == {"name": "apply_patch", "input": "raw text"}
    assert undeclared[1]["tool_calls"][0]["function"] == {
        "name": "apply_patch",
        "arguments": arguments,
    }


async def test_openai_streamed_custom_input_becomes_input_arguments_exactly(
    openai_upstream: OpenAIUpstream,
) -> None:
    pieces = [
        "*** Begin Patch\n",
        '*** Update File: a "b".py\n-x = "\\n"\n',
        "",
        '+x = "\\t"\t',
        "é ✓ 🙂\u2028\n*** End",
    ]
    assert "".join(pieces) == PATCH
    weather = {
        "index": 1,
        "id": "call_w",
        "type": "function",
        "function": {"name": "shell", "arguments": "{}"},
    }
    openai_upstream.default = Script(
        chunks=[
            "Patching.",
            custom_fragment(0, pieces[0], id="call_p", name="apply_patch"),
            *(custom_fragment(0, piece) for piece in pieces[1:]),
            {"tool_calls": [weather]},
        ],
        finish_reason="tool_calls",
    )
    async with OpenAI(base_url=openai_upstream.base_url) as provider:
        deltas = [d async for d in provider.stream("local-large", HI, tools=[APPLY_PATCH, SHELL])]
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert calls[0] == ToolCallDelta(0, "call_p", "apply_patch", '{"input": "*** Begin Patch\\n')
    # the custom call is closed before the next call begins, and only once
    assert calls[-2:] == [
        ToolCallDelta(0, arguments='"}'),
        ToolCallDelta(1, "call_w", "shell", "{}"),
    ]
    joined = joined_calls(deltas)
    assert json.loads(joined[0]["arguments"]) == {"input": PATCH}
    assert (joined[0]["id"], joined[0]["name"]) == ("call_p", "apply_patch")
    assert deltas[-2] == FinishDelta("tool_calls")
    # the fixture did send custom fragments (checked loosely, the rest of each chunk strictly)
    sent = [
        c["choices"][0]["delta"].get("tool_calls") for c in openai_upstream.sent if c["choices"]
    ]
    assert sum(1 for calls_ in sent if calls_ and "custom" in calls_[0]) == len(pieces)


async def test_whole_custom_calls_in_one_delta_are_each_closed(
    openai_upstream: OpenAIUpstream,
) -> None:
    whole = [
        {
            "index": 0,
            "id": "call_1",
            "type": "custom",
            "custom": {"name": "apply_patch", "input": PATCH},
        },
        {
            "index": 1,
            "id": "call_2",
            "type": "custom",
            "custom": {"name": "apply_patch", "input": ""},
        },
    ]
    openai_upstream.default = Script(
        chunks=[{"role": "assistant", "tool_calls": whole}], finish_reason="tool_calls"
    )
    async with OpenAI(base_url=openai_upstream.base_url) as provider:
        deltas = [d async for d in provider.stream("local-large", HI, tools=[APPLY_PATCH])]
    joined = joined_calls(deltas)
    assert [json.loads(joined[i]["arguments"]) for i in (0, 1)] == [{"input": PATCH}, {"input": ""}]
    finish = next(i for i, d in enumerate(deltas) if isinstance(d, FinishDelta))
    assert deltas[finish - 1] == ToolCallDelta(1, arguments='"}')  # closed before the finish


def events_of(deltas: list[dict[str, Any]], *, finish: bool) -> list[SSEEvent]:
    encoder = OpenAIChunkEncoder("m")
    chunks = [encoder.chunk(delta) for delta in deltas]
    if finish:
        chunks.append(encoder.chunk(finish_reason="tool_calls"))
    return [*(SSEEvent(json.dumps(chunk)) for chunk in chunks), SSEEvent("[DONE]")]


@given(
    pieces=st.lists(st.text(), min_size=1, max_size=6),
    finish=st.booleans(),
    sparse=st.booleans(),
)
def test_any_text_in_any_pieces_reads_back_exactly(
    pieces: list[str], finish: bool, sparse: bool
) -> None:
    first = custom_fragment(0, pieces[0], id="call_1", name="apply_patch")
    later = [custom_fragment(0, piece) for piece in pieces[1:]]
    if sparse:  # servers that serialize every member of the union, as nulls
        for delta in later:
            delta["tool_calls"][0] |= {"id": None, "type": None, "function": None}
    parse = OpenAI().stream_parser()
    out: list[Delta] = []
    ended = [parse(event, out) for event in events_of([first, *later], finish=finish)]
    assert ended[-1] is True
    (call,) = joined_calls(out).values()
    assert json.loads(call["arguments"]) == {"input": "".join(pieces)}
    assert (call["id"], call["name"]) == ("call_1", "apply_patch")


def test_function_calls_beside_no_custom_call_are_read_as_before() -> None:
    fragments = [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "c",
                    "type": "function",
                    "function": {"name": "shell", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"cmd": '}, "custom": None}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"ls"}'}}]},
    ]
    out: list[Delta] = []
    parse = OpenAI().stream_parser()
    for event in events_of(fragments, finish=True):
        parse(event, out)
    assert [d for d in out if isinstance(d, ToolCallDelta)] == [
        ToolCallDelta(0, "c", "shell", ""),
        ToolCallDelta(0, arguments='{"cmd": '),
        ToolCallDelta(0, arguments='"ls"}'),
    ]


# Anthropic and Gemini: a function of one string, `input` ------------------------------


async def test_anthropic_receives_a_custom_tool_as_a_function_of_one_string(
    anthropic_upstream: AnthropicUpstream,
) -> None:
    async with Anthropic(base_url=anthropic_upstream.base_url, api_key="sk-ant-test") as claude:
        stream = claude.stream(
            "claude-local-large",
            history(json.dumps({"input": PATCH})),
            tools=[APPLY_PATCH, {"type": "custom", "custom": {"name": "note"}}],
            tool_choice=FORCE_PATCH,
        )
        _ = [d async for d in stream]
    body = anthropic_upstream.requests[0].body
    assert body["tools"] == [
        {"name": "apply_patch", "description": DESCRIPTION, "input_schema": INPUT_ONLY},
        {"name": "note", "input_schema": INPUT_ONLY},  # no description, no grammar
    ]
    for tool in body["tools"]:
        TypeAdapter(ToolParam).validate_python(tool)
    assert body["tool_choice"] == {"type": "tool", "name": "apply_patch"}
    assert body["messages"][1]["content"][0] == {
        "type": "tool_use",
        "id": "call_p",
        "name": "apply_patch",
        "input": {"input": PATCH},
    }


async def test_gemini_receives_a_custom_tool_as_a_function_of_one_string(
    gemini_upstream: GeminiUpstream,
) -> None:
    regex = {
        "type": "custom",
        "custom": {
            "name": "date",
            "format": {
                "type": "grammar",
                "grammar": {"syntax": "regex", "definition": r"\d{4}-\d{2}-\d{2}"},
            },
        },
    }
    async with Gemini(base_url=gemini_upstream.base_url, api_key="AIza-test") as gemini:
        stream = gemini.stream(
            "gemini-local-pro",
            history(json.dumps({"input": PATCH})),
            tools=[APPLY_PATCH, regex, SHELL],
            tool_choice=FORCE_PATCH,
        )
        _ = [d async for d in stream]
    body = gemini_upstream.requests[0].body
    date_rule = "The input must match this regular expression:\n\\d{4}-\\d{2}-\\d{2}"
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {"name": "apply_patch", "description": DESCRIPTION, "parameters": INPUT_ONLY},
                {"name": "date", "description": date_rule, "parameters": INPUT_ONLY},
                {"name": "shell", "parameters": {"type": "object"}},
            ]
        }
    ]
    genai_types.Tool.model_validate(body["tools"][0])
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["apply_patch"]}
    }
    asked = {"functionCall": {"name": "apply_patch", "args": {"input": PATCH}}}
    assert body["contents"][1]["parts"][0] == asked


# Dropped options: one event, from the base class ----------------------------------------


async def test_darkai_reports_every_option_dropped_once(darkai_upstream: DarkAIUpstream) -> None:
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        with capture_logs() as logs:
            _ = [d async for d in provider.stream(None, HI, temperature=0.5, seed=7)]
    dropped = [log for log in logs if log["event"] == "provider.options_dropped"]
    assert [(log["provider"], log["options"]) for log in dropped] == [
        ("darkai", ["seed", "temperature"])
    ]
    assert "seed" not in darkai_upstream.requests[0].body


async def test_gemini_reports_the_options_it_does_not_take_once(
    gemini_upstream: GeminiUpstream,
) -> None:
    options: dict[str, Any] = {
        "temperature": 0.2,
        "logprobs": True,
        "prompt_cache_key": "k",
        "verbosity": "low",
    }
    async with Gemini(base_url=gemini_upstream.base_url, api_key="AIza-test") as gemini:
        with capture_logs() as logs:
            _ = [d async for d in gemini.stream("gemini-local-pro", HI, **options)]
    dropped = [log for log in logs if log["event"] == "provider.options_dropped"]
    assert [(log["provider"], log["options"]) for log in dropped] == [
        ("gemini", ["logprobs", "prompt_cache_key", "verbosity"])
    ]
    assert gemini_upstream.requests[0].body["generationConfig"] == {"temperature": 0.2}


async def test_openai_sends_every_option_and_reports_none_dropped(
    openai_upstream: OpenAIUpstream,
) -> None:
    options: dict[str, Any] = {
        "prompt_cache_key": "k",
        "safety_identifier": "u-1",
        "verbosity": "low",
        "seed": 7,
    }
    async with OpenAI(base_url=openai_upstream.base_url) as provider:
        with capture_logs() as logs:
            _ = [d async for d in provider.stream("local-large", HI, **options)]
    assert not [log for log in logs if log["event"] == "provider.options_dropped"]
    assert openai_upstream.requests[0].body.items() >= options.items()


def test_a_simulated_entry_drops_what_its_wire_format_drops() -> None:
    request = ChatRequest.build(HI, {"temperature": 0.5, "seed": 7})
    assert Simulated(name="sim-dark", format="darkai").dropped(request) == ["seed", "temperature"]
    assert Simulated(name="sim-open", format="openai").dropped(request) == []
