"""An OpenAI Responses request, translated to the router's chat shape.

Input items become chat messages (``message`` items by role, ``function_call`` and
``custom_tool_call`` items as an assistant's tool calls, their outputs as tool
messages), ``instructions`` a system message, function and custom tools and
``tool_choice`` their chat-completions shapes, ``text.format`` a ``response_format``,
``reasoning.effort`` the ``reasoning_effort`` option. What no entry type can take
(hosted tools such as ``web_search``, ``namespace`` groups, reasoning items,
``client_metadata``) is named in ``lost``, never refused; only a ``tool_choice`` that
forces a hosted tool is, since the request cannot be served without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from polyroute.core.errors import InvalidRequestError
from polyroute.server import dialects

# Keys read here, or by the exchange itself (stream, store, include, ids).
_READ_KEYS = frozenset(
    {"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls"}
    | {"text", "reasoning", "max_output_tokens", "temperature", "top_p", "metadata", "user"}
    | {"prompt_cache_key", "safety_identifier", "service_tier", "stream", "store", "include"}
    | {"previous_response_id", "stream_options"}
)
_PASSED_OPTIONS = (
    "temperature",
    "top_p",
    "metadata",
    "user",
    "prompt_cache_key",
    "safety_identifier",
    "service_tier",
    "parallel_tool_calls",
)
_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})


@dataclass
class Translation(dialects.Translation):
    """The chat-shaped request, with the names of its custom tools (whose calls go
    back to the client as ``custom_tool_call`` items)."""

    custom_tools: frozenset[str] = frozenset()


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``input`` as a list of items (a string is one user message)."""
    given = body.get("input")
    if isinstance(given, str):
        return [{"type": "message", "role": "user", "content": given}]
    if not isinstance(given, list):
        raise InvalidRequestError("input: a string or a list of input items is required")
    return given


def translate(body: dict[str, Any], items: list[dict[str, Any]]) -> Translation:
    """``body`` (with ``items``, the whole conversation) in the chat shape; raises
    :class:`InvalidRequestError` naming the path of what is malformed."""
    out = Translation()
    for key in body:
        if key not in _READ_KEYS:
            out.lose(key)  # client_metadata, truncation, prompt...
    if instructions := body.get("instructions"):
        if not isinstance(instructions, str):
            raise InvalidRequestError("instructions: must be a string")
        out.messages.append({"role": "system", "content": instructions})
    for index, item in enumerate(items):
        _item(item, f"input.{index}", out)
    _tools(body, out)
    _options(body, out)
    return out


# Items --------------------------------------------------------------------------------


def _item(item: Any, path: str, out: Translation) -> None:
    if not isinstance(item, dict):
        raise InvalidRequestError(f"{path}: an input item must be an object")
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        out.messages.append(_message(item, path, out))
    elif kind in ("function_call", "custom_tool_call"):
        _call(item, kind, path, out)
    elif kind in ("function_call_output", "custom_tool_call_output"):
        output = item.get("output", "")
        text = output if isinstance(output, str) else _text(output, f"{path}.output", out)
        call_id = _string(item, "call_id", path)
        out.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
    else:
        out.lose(f"{kind} items")  # reasoning, item_reference, web_search_call...


def _message(item: dict[str, Any], path: str, out: Translation) -> dict[str, Any]:
    role = item.get("role")
    if role not in _MESSAGE_ROLES:
        raise InvalidRequestError(
            f"{path}.role: must be user, assistant, system or developer, not {role!r}"
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequestError(f"{path}.content: a string or a list of content parts")
    if role != "user":  # the chat API takes only text from the other roles
        return {"role": role, "content": _text(content, f"{path}.content", out)}
    parts = [_part(part, f"{path}.content.{index}", out) for index, part in enumerate(content)]
    return {"role": role, "content": [part for part in parts if part is not None]}


def _part(part: Any, path: str, out: Translation) -> dict[str, Any] | None:
    if not isinstance(part, dict):
        raise InvalidRequestError(f"{path}: a content part must be an object")
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image: dict[str, Any] = {"url": part["image_url"]}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and isinstance(part.get("file_data"), str):
        data = part["file_data"]
        file = {"file_data": data, "filename": str(part.get("filename") or "file")}
        return {"type": "file", "file": file}
    out.lose(f"{kind} parts without inline data" if kind else "untyped parts")
    return None


def _text(content: Any, path: str, out: Translation) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError(f"{path}: a string or a list of content parts")
    texts = []
    for index, part in enumerate(content):
        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text"):
            texts.append(str(part.get("text", "")))
        elif _part(part, f"{path}.{index}", out) is not None:
            out.lose("non-text parts outside user messages")
    return "\n".join(texts)


def _call(item: dict[str, Any], kind: str, path: str, out: Translation) -> None:
    """A call joins the assistant turn just before it (chat keeps calls in one message)."""
    name = _string(item, "name", path)
    if kind == "custom_tool_call":
        arguments = orjson.dumps({"input": str(item.get("input", ""))}).decode()
    else:
        arguments = item.get("arguments", "")
        if not isinstance(arguments, str):
            raise InvalidRequestError(f"{path}.arguments: must be a JSON string")
    call = {
        "id": _string(item, "call_id", path),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    last = out.messages[-1] if out.messages else None
    if last is not None and last["role"] == "assistant" and not isinstance(last["content"], list):
        last.setdefault("tool_calls", []).append(call)
        return
    out.messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _string(item: dict[str, Any], key: str, path: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"{path}.{key}: a non-empty string is required")
    return value


# Tools and options --------------------------------------------------------------------


def _tools(body: dict[str, Any], out: Translation) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequestError("tools: a list of tools")
    translated, custom = [], []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequestError(f"tools.{index}: a tool must be an object")
        kind = tool.get("type")
        if kind == "function":
            function = {k: v for k, v in tool.items() if k != "type"}
            translated.append({"type": "function", "function": function})
        elif kind == "custom":
            spec = {k: v for k, v in tool.items() if k != "type"}
            form = spec.get("format")
            if isinstance(form, dict) and form.get("type") == "grammar" and "grammar" not in form:
                # The Responses API flattens a grammar into `format`; chat nests it.
                grammar = {k: v for k, v in form.items() if k != "type"}
                spec["format"] = {"type": "grammar", "grammar": grammar}
            translated.append({"type": "custom", "custom": spec})
            custom.append(str(tool.get("name")))
        else:
            out.lose(f"{kind} tools")  # web_search, tool_search, namespace, mcp...
    if translated:
        out.options["tools"] = translated
    out.custom_tools = frozenset(custom)
    if (choice := body.get("tool_choice")) is not None and translated:
        out.options["tool_choice"] = _tool_choice(choice, out)


def _tool_choice(choice: Any, out: Translation) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if not isinstance(choice, dict):
        raise InvalidRequestError("tool_choice: auto, none, required or a tool object")
    kind = choice.get("type")
    if kind in ("function", "custom") and isinstance(choice.get("name"), str):
        return {"type": kind, kind: {"name": choice["name"]}}
    if kind == "allowed_tools":
        out.lose("tool_choice.allowed_tools")
        return "required" if choice.get("mode") == "required" else "auto"
    raise InvalidRequestError(
        f"tool_choice forces the hosted tool {kind!r}, which no entry of this gateway can "
        "run; let the model choose (auto) or force a function tool"
    )


def _options(body: dict[str, Any], out: Translation) -> None:
    options = out.options
    for name in _PASSED_OPTIONS:
        if (value := body.get(name)) is not None:
            options[name] = value
    if "tools" not in options:
        options.pop("parallel_tool_calls", None)  # refused upstream without tools
    if (tokens := body.get("max_output_tokens")) is not None:
        options["max_completion_tokens"] = tokens
    text = body.get("text")
    if isinstance(text, dict):
        if (verbosity := text.get("verbosity")) is not None:
            options["verbosity"] = verbosity
        if isinstance(form := text.get("format"), dict):
            _format(form, options)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        if (effort := reasoning.get("effort")) is not None:
            options["reasoning_effort"] = effort
        if reasoning.get("summary") is not None:
            out.lose("reasoning.summary")


def _format(form: dict[str, Any], options: dict[str, Any]) -> None:
    kind = form.get("type")
    if kind == "json_schema":
        schema = {k: v for k, v in form.items() if k != "type"}
        options["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind == "json_object":
        options["response_format"] = {"type": "json_object"}
