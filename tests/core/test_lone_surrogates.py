"""A lone surrogate (half of a UTF-16 pair, or an undecodable byte kept by Python's
surrogateescape) has no UTF-8 form: the request is refused where it is made, naming the
field, rather than failing inside the JSON encoder later."""

from __future__ import annotations

from typing import Any

import pytest

from polyroute import InvalidMessagesError, InvalidRequestError, Message
from polyroute.core.messages import normalize_messages
from polyroute.core.request import ChatRequest, check_options

HINT = "is a lone surrogate, which UTF-8 cannot encode"


@pytest.mark.parametrize(
    ("message", "where"),
    [
        ({"role": "user", "content": "\ud800"}, r"message 0.content: '\ud800' at character 0"),
        (
            {"role": "user", "content": [{"type": "text", "text": "ok \udc00"}]},
            r"message 0.content.0.text: '\udc00' at character 3",
        ),
        ({"role": "user", "content": "x", "name": "b\udfff"}, "message 0.name: '\\udfff'"),
        ({"role": "user", "content": "x", "extra": {"k": ["\ud83d"]}}, "message 0.extra.k.0"),
        ({"role": "user", "content": "x", "extra": {"k\ud800": 1}}, r"message 0.extra.'k\ud800'"),
    ],
)
def test_a_lone_surrogate_in_a_message_names_the_field(message: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidMessagesError) as caught:
        normalize_messages([message])
    text = str(caught.value)
    assert text.startswith(f"invalid messages: {where}")
    assert HINT in text
    text.encode("utf-8")  # the message itself can be printed


def test_message_objects_are_checked_too() -> None:
    with pytest.raises(InvalidMessagesError, match=HINT):
        normalize_messages(
            [Message(role="user", content="fine"), Message(role="user", content="\ud800")]
        )


def test_a_surrogate_pair_written_as_one_character_is_fine() -> None:
    (message,) = normalize_messages([{"role": "user", "content": "smile \U0001f600 é"}])
    assert message.content == "smile \U0001f600 é"


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"stop": ["ok", "\ud800"]}, "stop.1: '\\ud800'"),
        ({"user": "\udcff"}, "user: '\\udcff'"),
        ({"extra_body": {"top_k\ud800": 1}}, "extra_body.'top_k\\ud800'"),
    ],
)
def test_a_lone_surrogate_in_an_option_names_the_option(
    options: dict[str, Any], where: str
) -> None:
    with pytest.raises(InvalidRequestError, match=HINT) as caught:
        check_options(options)
    assert str(caught.value).startswith(f"invalid request parameters: {where}")


def test_a_chat_request_with_one_is_refused_when_built() -> None:
    with pytest.raises(InvalidMessagesError):
        ChatRequest.build([{"role": "user", "content": "\ud800"}], {})
