"""The translations of Anthropic Messages and OpenAI Responses requests to the router's
chat shape: what is carried, what is named as lost, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from polyroute import InvalidRequestError
from polyroute.core.request import ChatRequest
from polyroute.server.dialects import messages_request, responses_request

FIXTURES = Path(__file__).parent.parent / "agents" / "fixtures"
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
PDF = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}


def messages(body: dict[str, Any]) -> messages_request.Translation:
    translation = messages_request.translate({"model": "m", **body})
    ChatRequest.build(translation.messages, translation.options)  # valid for the router
    return translation


def responses(body: dict[str, Any]) -> responses_request.Translation:
    items = responses_request.input_items(body)
    translation = responses_request.translate({"model": "m", **body}, items)
    ChatRequest.build(translation.messages, translation.options)
    return translation


# Anthropic Messages -------------------------------------------------------------------


def test_messages_content_blocks_become_chat_parts_in_order() -> None:
    user = [
        {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "t2", "is_error": True,
         "content": [{"type": "text", "text": "no such city"}]},
        {"type": "text", "text": "And here?"},
        {"type": "image", "source": PNG},
        {"type": "image", "source": {"type": "url", "url": "https://example.invalid/a.png"}},
        {"type": "document", "source": PDF, "title": "spec.pdf"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                        "data": "plain words"}},
    ]  # fmt: skip
    assistant = [
        {"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
    ]
    translation = messages(
        {
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": assistant},
                {"role": "user", "content": user},
            ],
        }
    )
    assert translation.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: no such city"},
        {"role": "user", "content": [
            {"type": "text", "text": "And here?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=",
                                      "filename": "spec.pdf"}},
            {"type": "text", "text": "plain words"},
        ]},
    ]  # fmt: skip
    assert translation.lost == ["thinking blocks"]


def test_messages_options_map_to_openai_names_and_the_rest_is_named_lost() -> None:
    tools = [
        {"name": "weather", "description": "Now", "input_schema": {"type": "object"},
         "cache_control": {"type": "ephemeral"}},
        {"name": "later", "input_schema": {"type": "object"}, "defer_loading": True},
        {"type": "web_search_20250305", "name": "web_search"},
    ]  # fmt: skip
    translation = messages(
        {
            "system": [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 100,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 5,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-1"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "output_config": {"effort": "medium"},
            "tools": tools,
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        }
    )
    options = translation.options
    assert {k: v for k, v in options.items() if k != "tools"} == {
        "max_tokens": 100,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
        "user": "u-1",
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    assert [tool["function"]["name"] for tool in options["tools"]] == ["weather", "later"]
    assert options["tools"][0]["function"] == {
        "name": "weather",
        "description": "Now",
        "parameters": {"type": "object"},
    }
    assert sorted(translation.lost) == sorted(
        ["top_k", "output_config", "cache_control", "thinking", "tools.cache_control",
         "tools.defer_loading", "tools of type web_search_20250305"]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "weather"},
            {"type": "function", "function": {"name": "weather"}},
        ),
    ],
)
def test_messages_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    tool = {"name": "weather", "input_schema": {"type": "object"}}
    translation = messages(
        {"messages": [{"role": "user", "content": "Hi"}], "tools": [tool], "tool_choice": choice}
    )
    assert translation.options["tool_choice"] == expected


def test_claude_codes_own_request_translates_with_its_system_message() -> None:
    body = json.loads((FIXTURES / "claude_code_tool_result.json").read_text())
    translation = messages(body)
    roles = [message["role"] for message in translation.messages]
    assert roles == ["system", "user", "system", "assistant", "tool"]
    assert translation.messages[2]["content"].startswith("# Environment")
    assert set(translation.lost) == {
        "context_management",
        "output_config",
        "cache_control",
        "thinking",
        "tools.defer_loading",
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "messages: a non-empty list"),
        ({"messages": [{"role": "robot", "content": "Hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0"),
        ({"messages": [{"role": "user", "content": "Hi"}], "tools": [{}]}, "tools.0"),
        ({"messages": [{"role": "user", "content": "Hi"}], "tool_choice": {"type": "x"}},
         "tool_choice"),
    ],
)  # fmt: skip
def test_malformed_messages_requests_name_the_path(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        messages_request.translate(body)


# OpenAI Responses ---------------------------------------------------------------------


def test_responses_items_become_chat_messages() -> None:
    items = [
        {"type": "message", "role": "developer", "content": [
            {"type": "input_text", "text": "You are Codex."}]},
        {"role": "user", "content": [
            {"type": "input_text", "text": "Look:"},
            {"type": "input_image", "image_url": "data:image/png;base64,AA==", "detail": "low"},
            {"type": "input_file", "file_data": "data:application/pdf;base64,JV==",
             "filename": "a.pdf"},
        ]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Running it."}]},
        {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "exec_command",
         "arguments": '{"cmd": "ls"}'},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin"},
        {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
        {"type": "custom_tool_call_output", "id": "o2", "call_id": "c2", "output": "done"},
    ]  # fmt: skip
    translation = responses({"instructions": "Be brief.", "input": items})
    assert translation.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "You are Codex."},
        {"role": "user", "content": [
            {"type": "text", "text": "Look:"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA==",
                                                "detail": "low"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JV==",
                                      "filename": "a.pdf"}},
        ]},
        {"role": "assistant", "content": "Running it.", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "exec_command", "arguments": '{"cmd": "ls"}'}},
            {"id": "c2", "type": "function",
             "function": {"name": "apply_patch", "arguments": '{"input":"*** Begin"}'}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "c2", "content": "done"},
    ]  # fmt: skip
    assert translation.lost == ["reasoning items"]


def test_responses_tools_and_options() -> None:
    schema = {"type": "object", "properties": {}}
    grammar = {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}
    custom = {"type": "custom", "name": "apply_patch", "description": "Edit", "format": grammar}
    translation = responses(
        {
            "input": "Hi",
            "tools": [
                {"type": "function", "name": "f", "parameters": schema, "strict": False},
                custom,
                {"type": "web_search", "external_web_access": False},
                {"type": "namespace", "name": "multi_agent_v1", "tools": []},
            ],
            "tool_choice": {"type": "custom", "name": "apply_patch"},
            "parallel_tool_calls": True,
            "text": {"verbosity": "low", "format": {"type": "json_schema", "name": "o",
                                                    "schema": schema, "strict": True}},
            "reasoning": {"effort": "medium", "summary": "auto"},
            "max_output_tokens": 500,
            "prompt_cache_key": "session-1",
            "client_metadata": {"a": "b"},
            "store": False,
            "include": ["reasoning.encrypted_content"],
        }
    )  # fmt: skip
    options = translation.options
    assert options["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": schema, "strict": False}},
        {"type": "custom", "custom": {"name": "apply_patch", "description": "Edit", "format": {
            "type": "grammar", "grammar": {"syntax": "lark", "definition": "start: /.+/"}}}},
    ]  # fmt: skip
    assert options["tool_choice"] == {"type": "custom", "custom": {"name": "apply_patch"}}
    assert options["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "o", "schema": schema, "strict": True},
    }
    assert (options["verbosity"], options["reasoning_effort"]) == ("low", "medium")
    assert options["max_completion_tokens"] == 500
    assert options["prompt_cache_key"] == "session-1"
    assert options["parallel_tool_calls"] is True
    assert translation.custom_tools == frozenset({"apply_patch"})
    assert translation.lost == [
        "client_metadata",
        "web_search tools",
        "namespace tools",
        "reasoning.summary",
    ]


def test_a_tool_choice_forcing_a_hosted_tool_is_refused() -> None:
    body = {"input": "Hi", "tools": [{"type": "function", "name": "f"}],
            "tool_choice": {"type": "web_search"}}  # fmt: skip
    with pytest.raises(InvalidRequestError, match="hosted tool 'web_search'"):
        responses(body)


def test_codexs_own_request_translates() -> None:
    body = json.loads((FIXTURES / "codex_function_call_output.json").read_text())
    translation = responses(body)
    roles = [message["role"] for message in translation.messages]
    assert roles[:2] == ["developer", "developer"]
    assert roles[-2:] == ["assistant", "tool"]
    assert translation.messages[-1]["content"].rstrip().endswith("polyroute-ok")
    assert "apply_patch" in translation.custom_tools
    assert {"web_search tools", "tool_search tools", "client_metadata"} <= set(translation.lost)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": 3}, "input: a string or a list"),
        ({"input": [{"type": "message", "role": "robot", "content": "x"}]}, "input.0.role"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
         "input.0.call_id"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
         "input.0.arguments"),
    ],
)  # fmt: skip
def test_malformed_responses_requests_name_the_path(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        responses(body)
