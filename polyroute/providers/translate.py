"""What the native providers (Anthropic, Gemini) share when they translate an
OpenAI-shaped conversation into their own: turns that alternate, tool-call arguments
as objects, inline (``data:``) media."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from polyroute.core.errors import InvalidRequestError
from polyroute.core.messages import Message, MessageToolCall

_DATA_URL = re.compile(r"data:(?P<media>[\w/+.-]+);base64,(?P<data>.*)", re.S)


def alternating_turns(
    messages: Iterable[Message],
    pieces: Callable[[Message], list[dict[str, Any]]],
    *,
    assistant: str,
    content_key: str,
) -> list[dict[str, Any]]:
    """One turn per message, ``{"role": ..., content_key: pieces(message)}``, with
    consecutive turns of one role merged (both APIs refuse two in a row) and messages
    with nothing to send left out; tool results count as the user's."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = assistant if message.role == "assistant" else "user"
        content = pieces(message)
        if not content:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1][content_key] += content
        else:
            turns.append({"role": role, content_key: content})
    return turns


def call_arguments(call: MessageToolCall, upstream: str) -> Any:
    """A tool call's ``arguments`` string as the JSON value it holds."""
    try:
        return json.loads(call.function.arguments or "{}")
    except ValueError:
        raise InvalidRequestError(
            f"tool call {call.id}: arguments are not JSON, which {upstream} requires"
        ) from None


def inline_media(url: str) -> tuple[str, str] | None:
    """``(media type, base64 data)`` of a ``data:`` URL; None for any other URL."""
    found = _DATA_URL.fullmatch(url)
    return (found["media"], found["data"]) if found else None


_GRAMMARS = {"lark": "Lark grammar", "regex": "regular expression"}


def custom_as_function(custom: dict[str, Any]) -> dict[str, Any]:
    """A custom tool's ``custom`` object (free-form text input) as an OpenAI function
    of one string, ``input``, for upstreams without custom tools (Gemini uses it too):
    its calls then come back with the arguments ``{"input": "<text>"}``, polyroute's
    form of a custom call. Such an upstream cannot hold the model to a grammar, so the
    description shows it the grammar instead."""
    description = custom.get("description") or ""
    form = custom.get("format") or {}
    if form.get("type") == "grammar":
        # Chat completions nests the grammar; the Responses API flattens it into `format`.
        grammar = form.get("grammar") or form
        syntax = str(grammar.get("syntax") or "")
        kind = _GRAMMARS.get(syntax, f"{syntax} grammar".strip())
        rule = f"The input must match this {kind}:\n{grammar.get('definition', '')}"
        description = f"{description}\n\n{rule}" if description else rule
    text = {"type": "string", "description": "The tool's input, as free-form text."}
    parameters = {"type": "object", "properties": {"input": text}, "required": ["input"]}
    return {"name": custom["name"], "description": description, "parameters": parameters}
