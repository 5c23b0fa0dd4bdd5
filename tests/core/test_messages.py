from __future__ import annotations

import pytest
from pydantic import BaseModel

from polyroute import InvalidMessagesError, Message, format_prompt
from polyroute.core.messages import normalize_messages


def test_single_message_gives_its_content_unchanged() -> None:
    assert (
        format_prompt([{"role": "user", "content": "Hello, how are you?"}]) == "Hello, how are you?"
    )


def test_several_messages_give_role_lines_and_assistant_cue() -> None:
    prompt = format_prompt(
        [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Joke?"},
        ]
    )
    assert prompt == "System: Be kind.\nUser: Hi\nAssistant: Hello!\nUser: Joke?\nAssistant:"


def test_empty_list_is_a_value_error_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="messages must not be empty"):
        format_prompt([])


def test_pydantic_models_are_accepted() -> None:
    class Custom(BaseModel):
        role: str
        content: str

    messages = [Custom(role="user", content="a"), Message(role="assistant", content="b")]
    assert format_prompt(messages) == "User: a\nAssistant: b\nAssistant:"


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([{"role": "robot", "content": "x"}], "message 0.role"),
        ([{"role": "user"}], "message 0: .*content is required"),
        (
            [{"role": "user", "content": "ok"}, {"role": "user", "content": None}],
            "message 1: .*content is required",
        ),
        ("Hello", "must be a list"),
        ([], "must not be empty"),
    ],
)
def test_invalid_messages_name_the_problem(messages: object, fragment: str) -> None:
    with pytest.raises(InvalidMessagesError, match=fragment):
        normalize_messages(messages)  # type: ignore[arg-type]


def test_extra_keys_are_kept() -> None:
    (message,) = normalize_messages([{"role": "user", "content": "x", "name": "bob"}])
    assert message.as_openai() == {"role": "user", "content": "x", "name": "bob"}


def test_content_parts_tool_calls_and_tool_results_are_accepted() -> None:
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                {"type": "file", "file": {"file_id": "file-1"}},
            ],
            "name": "ann",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    checked = normalize_messages(conversation)
    assert [m.as_openai() for m in checked] == conversation
    assert checked[1].has_media
    assert not checked[0].has_media
    assert checked[1].text() == "Look:"
    assert format_prompt(checked[:2]) == "System: Be brief.\nUser: Look:\nAssistant:"


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"role": "tool", "content": "42"}, "message 0: .*tool_call_id"),
        ({"role": "user", "content": "x", "tool_call_id": "c"}, "only tool messages"),
        (
            {"role": "user", "content": "x", "tool_calls": []},
            "only assistant messages carry tool_calls",
        ),
        ({"role": "assistant", "content": None}, "content is required"),
        ({"role": "user", "content": [{"type": "video", "url": "v"}]}, "message 0.content"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
            r"message 0.content.*image_url.url",
        ),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]},
            r"message 0.tool_calls.0.function.arguments",
        ),
    ],
)
def test_invalid_shapes_name_the_message_and_field(message: object, fragment: str) -> None:
    with pytest.raises(InvalidMessagesError, match=fragment):
        normalize_messages([message])  # type: ignore[list-item]
