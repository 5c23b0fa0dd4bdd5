"""An Anthropic Messages request, translated to the router's chat shape.

The translation is what entries of other formats get: the system prompt (top-level or
a ``role: "system"`` message, which Claude Code sends) as system messages, text,
image and document blocks as content parts, ``tool_use`` / ``tool_result`` blocks as
tool calls and tool messages, tools and ``tool_choice`` in OpenAI's shape. What it
cannot carry (thinking blocks, ``cache_control``, ``top_k``, beta features such as
``context_management``) is named in ``lost``; an entry of Anthropic's own format gets
the request as it was written instead (see ``NativeRequest``), and loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from polyroute.core.errors import InvalidRequestError
from polyroute.server.dialects import Translation

_READ_KEYS = frozenset(
    {"model", "messages", "system", "max_tokens", "stream", "tools", "tool_choice"}
    | {"stop_sequences", "temperature", "top_p", "metadata", "thinking"}
)
_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def translate(body: dict[str, Any]) -> Translation:
    """``body``'s messages and options in the chat shape; raises
    :class:`InvalidRequestError` naming the path of what is malformed."""
    out = Translation()
    for key in body:
        if key not in _READ_KEYS:
            out.lose(key)  # output_config, context_management, container, top_k...
    if (system := body.get("system")) is not None:
        out.messages.append({"role": "system", "content": _text_of(system, "system", out)})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages: a non-empty list of messages is required")
    for index, message in enumerate(messages):
        out.messages += _message(message, f"messages.{index}", out)
    _options(body, out)
    return out


# Messages -----------------------------------------------------------------------------


def _message(message: Any, path: str, out: Translation) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        raise InvalidRequestError(f"{path}: a message must be an object")
    role, content = message.get("role"), message.get("content")
    if role not in ("user", "assistant", "system"):
        raise InvalidRequestError(f"{path}.role: must be user, assistant or system, not {role!r}")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequestError(f"{path}.content: a string or a list of content blocks")
    if role == "system":
        return [{"role": "system", "content": _text_of(content, f"{path}.content", out)}]
    if role == "assistant":
        return [_assistant(content, path, out)]
    return list(_user(content, path, out))


def _assistant(blocks: list[Any], path: str, out: Translation) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        kind = _kind(block, f"{path}.content.{index}", out)
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": str(block.get("name", "")), "arguments": arguments}
            calls.append({"id": str(block.get("id", "")), "type": "function", "function": function})
        else:  # thinking, redacted_thinking, server tool blocks: no chat equivalent
            out.lose(f"{kind} blocks")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _user(blocks: list[Any], path: str, out: Translation) -> Iterator[dict[str, Any]]:
    """Tool results become tool messages, in place; the other blocks, user messages."""
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        where = f"{path}.content.{index}"
        if _kind(block, where, out) == "tool_result":
            if parts:
                yield {"role": "user", "content": parts}
                parts = []
            yield _tool_result(block, where, out)
        elif (part := _part(block, where, out)) is not None:
            parts.append(part)
    if parts:
        yield {"role": "user", "content": parts}


def _tool_result(block: dict[str, Any], path: str, out: Translation) -> dict[str, Any]:
    content = block.get("content", "")
    text = content if isinstance(content, str) else _text_of(content, f"{path}.content", out)
    if block.get("is_error"):
        text = f"Error: {text}"  # chat tool messages have no error flag: say it in words
    return {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text}


def _part(block: dict[str, Any], path: str, out: Translation) -> dict[str, Any] | None:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": str(block.get("text", ""))}
    source = block.get("source")
    if kind == "image" and isinstance(source, dict):
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
            return {"type": "image_url", "image_url": {"url": url}}
        if source.get("type") == "url":
            return {"type": "image_url", "image_url": {"url": str(source.get("url"))}}
    if kind == "document" and isinstance(source, dict):
        if source.get("type") == "base64":
            data = f"data:{source.get('media_type')};base64,{source.get('data')}"
            name = str(block.get("title") or "document.pdf")
            return {"type": "file", "file": {"file_data": data, "filename": name}}
        if source.get("type") == "text":
            return {"type": "text", "text": str(source.get("data", ""))}
    out.lose(f"{kind} blocks" if kind not in ("image", "document") else f"{kind} sources")
    return None


def _kind(block: Any, path: str, out: Translation) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise InvalidRequestError(f"{path}: a content block must be an object with a type")
    if "cache_control" in block:
        out.lose("cache_control")
    return str(block["type"])


def _text_of(content: Any, path: str, out: Translation) -> str:
    """The text of a string or a list of text blocks (system prompts, tool results)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError(f"{path}: a string or a list of text blocks")
    texts = []
    for index, block in enumerate(content):
        if _kind(block, f"{path}.{index}", out) == "text":
            texts.append(str(block.get("text", "")))
        else:
            out.lose(f"{block['type']} blocks")
    return "\n\n".join(texts)


# Options ------------------------------------------------------------------------------


def _options(body: dict[str, Any], out: Translation) -> None:
    options = out.options
    if (max_tokens := body.get("max_tokens")) is not None:
        options["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        if (value := body.get(name)) is not None:
            options[name] = value
    if (stops := body.get("stop_sequences")) is not None:
        options["stop"] = stops
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        options["user"] = metadata["user_id"]
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") != "disabled":
        out.lose("thinking")
    if (tools := body.get("tools")) is not None:
        if not isinstance(tools, list):
            raise InvalidRequestError("tools: a list of tools")
        translated = [_tool(tool, index, out) for index, tool in enumerate(tools)]
        options["tools"] = [tool for tool in translated if tool is not None]
    if (choice := body.get("tool_choice")) is not None:
        _tool_choice(choice, out)
    if not options.get("tools"):
        options.pop("tools", None)
        options.pop("tool_choice", None)  # a choice among no tools is refused upstream
        options.pop("parallel_tool_calls", None)


def _tool(tool: Any, index: int, out: Translation) -> dict[str, Any] | None:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise InvalidRequestError(f"tools.{index}: a tool must be an object with a name")
    kind = tool.get("type", "custom")
    if kind != "custom" or "input_schema" not in tool:
        out.lose(f"tools of type {kind}")  # server tools (web search, bash...): Anthropic's own
        return None
    for key in tool:
        if key not in ("name", "description", "input_schema", "type"):
            out.lose(f"tools.{key}")  # cache_control, defer_loading, input_examples...
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, out: Translation) -> None:
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise InvalidRequestError("tool_choice: type must be auto, any, tool or none")
    kind = choice["type"]
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise InvalidRequestError("tool_choice.name: the tool to use is required")
        out.options["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        out.options["tool_choice"] = _CHOICES[kind]
    if choice.get("disable_parallel_tool_use") and kind != "none":
        out.options["parallel_tool_calls"] = False
