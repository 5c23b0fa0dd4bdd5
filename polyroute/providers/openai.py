"""OpenAI-compatible chat completions: OpenAI, Groq, Together, OpenRouter, Mistral,
DeepSeek, and local servers (vLLM, Ollama, llama.cpp, LM Studio, LiteLLM).

POST ``{base_url}/chat/completions`` with ``stream: true``; each SSE event is a
``chat.completion.chunk`` whose ``choices[0].delta`` carries ``content``,
``reasoning_content`` (or ``reasoning``) and ``tool_calls`` fragments, and
``data: [DONE]`` ends the answer. Errors come as ``{"error": {"message", "type",
"code"}}`` (vLLM: the same keys at the top level), in a non-2xx body or, on some
servers, inside the stream.

Custom tools (free-form text input) go upstream as they are. Their calls travel in
polyroute as function calls with the arguments ``{"input": "<text>"}``: a conversation's
calls of a declared custom tool are sent back in the custom shape, and a streamed
``custom.input`` is re-framed as those arguments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, ClassVar

import orjson

from polyroute.core.deltas import (
    Delta,
    ExtraDelta,
    FinishDelta,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageDelta,
)
from polyroute.core.embeddings import (
    Embedded,
    EncodingFormat,
    read_base64_vector,
    read_vector,
    read_vectors,
)
from polyroute.core.errors import (
    AuthenticationError,
    ContextLengthExceededError,
    ModelNotSupportedError,
    PolyrouteError,
    RateLimitedError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from polyroute.core.jsoncodec import loads
from polyroute.core.messages import Message, continuation_messages
from polyroute.core.request import ChatRequest
from polyroute.core.sse import SSEEvent, excerpt
from polyroute.core.wire import WireFormat
from polyroute.providers.base import EventParser
from polyroute.providers.compat import AsyncGeneratorProvider

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_MODEL_CODES = frozenset({"model_not_found", "model_not_available", "invalid_model"})
# How servers say "no such model" (LiteLLM, vLLM, Ollama, OpenRouter, Groq, Together...).
_UNKNOWN_MODEL = re.compile(
    r"invalid model|unknown model|no such model|not a valid model|unable to access model"
    r"|model\b.{0,120}?\b(not found|does not exist|doesn't exist|is not available|not supported)",
    re.IGNORECASE | re.DOTALL,
)
_DELTA_KEYS_HANDLED = frozenset({"role", "content", "reasoning_content", "reasoning", "tool_calls"})


class OpenAI(AsyncGeneratorProvider):
    """Any upstream speaking OpenAI's streaming chat-completions format."""

    type_name = "openai"
    url = "https://platform.openai.com"
    base_url = "https://api.openai.com/v1"
    prices_from = "openai"
    api_endpoint = "https://api.openai.com/v1/chat/completions"
    working = True
    needs_auth = True
    supports_system_message = True
    supports_message_history = True
    supports_continuation = True
    supports_tools = True
    supports_vision = True
    supports_json_schema = True
    supports_embeddings = True
    default_model = "gpt-4o-mini"
    headers = {"accept": "text/event-stream", "content-type": "application/json"}
    end_event_name = "data: [DONE]"
    wire_format: ClassVar[WireFormat | None] = "openai"
    include_usage = True
    """Ask for the final usage chunk (``stream_options``); some old servers reject it."""

    def __init__(
        self, *, base_url: str | None = None, include_usage: bool | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if base_url is not None:
            self.base_url = base_url.rstrip("/")
            if kwargs.get("api_endpoint") is None:
                self.api_endpoint = f"{self.base_url}/chat/completions"
        if include_usage is not None:
            self.include_usage = include_usage

    def build_request(
        self,
        model: str,
        request: ChatRequest,
        *,
        continue_from: str | None = None,
        prefill: bool | None = None,
    ) -> dict[str, Any]:
        messages = request.messages
        if continue_from:
            # By prefill the upstream continues a final assistant message; otherwise it
            # is told to continue. The router decides (``prefill``), else the entry's flag.
            by_prefill = self.supports_prefill if prefill is None else prefill
            messages = continuation_messages(messages, continue_from, prefill=by_prefill)
        custom = _custom_tool_names(request.options.get("tools")) if request.options else None
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                _with_custom_calls(message, custom) if custom else message.as_openai()
                for message in messages
            ],
            "stream": True,
            **request.options,
        }
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.parse_event is not OpenAI.parse_event:
            cls.wire_format = None  # its own reading of events must see every chunk

    def stream_parser(self, continue_from: str | None = None) -> EventParser:
        if type(self).parse_event is not OpenAI.parse_event:
            return self.parse_event  # a subclass that reads events its own way keeps it
        return _AnswerParser(self).parse

    def parse_event(self, event: SSEEvent, out: list[Delta]) -> bool:
        # One event alone: a custom call's input is opened here but closed by no later event.
        return _AnswerParser(self).parse(event, out)

    def classify_status_error(self, error: UpstreamStatusError, model: str) -> PolyrouteError:
        try:
            payload = loads(error.body)
        except ValueError:
            return error
        if not isinstance(payload, dict) or not ("error" in payload or "message" in payload):
            return error
        return self.error_from_payload(payload, error.status, model, error.retry_after)

    def error_from_payload(
        self,
        payload: dict[str, Any],
        status: int | None,
        model: str,
        retry_after: float | None = None,
    ) -> PolyrouteError:
        """The typed error for an OpenAI-style error object, nested under ``error`` or
        (vLLM) at the top level. ``code`` may be a string or a number."""
        detail = payload.get("error", payload)
        message, code = str(detail), ""
        if isinstance(detail, dict):
            message = str(detail.get("message") or detail)
            code = _code(detail.get("code")) or _code(detail.get("type"))
        if code.isdigit():
            # OpenRouter, LiteLLM and vLLM put a status in `code`: the one of the model
            # behind them, which says more than the status of the answer that carries it.
            if 400 <= int(code) < 600:
                status = int(code)
            code = ""
        return self._typed_error(message, code, status, model, retry_after)

    def _typed_error(
        self, message: str, code: str, status: int | None, model: str, retry_after: float | None
    ) -> PolyrouteError:
        text = message.lower()
        provider = self.entry_name
        if code in _CONTEXT_CODES or "context length" in text or "context window" in text:
            return ContextLengthExceededError(
                status or 400, provider=provider, body=message, retryable=False
            )
        unknown_model = status in (400, 404, None) and _UNKNOWN_MODEL.search(message)
        if code in _MODEL_CODES or unknown_model:
            return ModelNotSupportedError(model, provider=provider, detail=message)
        if code == "insufficient_quota":
            return RateLimitedError(status or 429, provider=provider, body=message, retryable=False)
        if status in (401, 403) or code == "invalid_api_key":
            return AuthenticationError(
                status or 401, provider=provider, body=message, retryable=False
            )
        if status == 429 or code == "rate_limit_exceeded":
            return RateLimitedError(
                status or 429, provider=provider, body=message, retry_after=retry_after
            )
        if status is not None:
            return UpstreamStatusError(
                status, provider=provider, body=message, retry_after=retry_after
            )
        return UpstreamError(f"error inside the stream: {message}", provider=provider)

    @property
    def models_url(self) -> str:
        return f"{self.base_url}/models"

    def embeddings_request(
        self, model: str, inputs: list[str], dimensions: int | None, encoding_format: EncodingFormat
    ) -> tuple[str, dict[str, Any]]:
        """``POST {base_url}/embeddings`` in the form asked: base64 (the SDK's default)
        saves bytes; a server without it that sends floats is read all the same."""
        body: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": encoding_format}
        if dimensions is not None:
            body["dimensions"] = dimensions
        return f"{self.base_url}/embeddings", body

    def read_embeddings(self, answer: Any) -> Embedded:
        """``data[].embedding`` (all floats or all base64), put in order by
        ``data[].index`` (a server may answer a batch out of order), and ``usage``."""
        data = answer["data"]
        if not isinstance(data, list) or not data:
            raise TypeError("data is not a non-empty list")
        if _in_order(data):  # as OpenAI answers: read in one pass
            vectors = read_vectors([item.get("embedding") for item in data], "data[{}].embedding")
        else:
            vectors = _reordered(data)
        counted = answer.get("usage")
        usage = Usage.from_openai(counted) if isinstance(counted, dict) else None
        if isinstance(vectors[0], str):
            return Embedded(base64=vectors, usage=usage)
        return Embedded(vectors, usage)

    def relayable(self, answer: Any, model: str, encoding_format: EncodingFormat) -> bool:
        """In the inputs' order, in the form asked and naming the model asked."""
        data = answer["data"]
        return (
            answer.get("model") == model
            and isinstance(data[0]["embedding"], str) == (encoding_format == "base64")
            and all(item.get("index", position) == position for position, item in enumerate(data))
        )


def _in_order(data: list[Any]) -> bool:
    """Whether ``data[].index`` counts 0, 1, 2... (whole numbers, not ``true``)."""
    indexes = [item.get("index") for item in data]
    # False == 0 and True == 1: only the first two could pass for a boolean.
    in_order = indexes == list(range(len(indexes)))
    return in_order and bool not in {type(index) for index in indexes[:2]}


def _reordered(data: list[Any]) -> list[Any]:
    """The vectors of ``data`` by their ``index`` (missing: the item's position), each
    read; raises ``ValueError`` for indexes that are not 0 to n - 1 once each."""
    encoded = isinstance(data[0].get("embedding"), str)
    read = read_base64_vector if encoded else read_vector
    by_index: dict[int, Any] = {}
    for position, item in enumerate(data):
        index = item.get("index", position)
        if type(index) is not int or index in by_index:
            raise ValueError(f"data[{position}].index {index!r} is not a new integer")
        by_index[index] = read(item.get("embedding"), f"data[{position}].embedding")
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"data[].index runs {sorted(by_index)}, not 0 to {len(data) - 1}")
    return [by_index[index] for index in range(len(by_index))]


def _code(value: Any) -> str:
    """An error code as text; a malformed one (a list, a bool) must not stop the error
    being reported, so it reads as no code."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value)


def _read_choice_end(choice: dict[str, Any], out: list[Delta]) -> None:
    if logprobs := choice.get("logprobs"):
        out.append(ExtraDelta({"logprobs": logprobs}))
    if reason := choice.get("finish_reason"):
        out.append(FinishDelta(str(reason)))


class _AnswerParser:
    """One answer's chunks. Text and function calls need no state; a custom tool's call
    does: its free-form ``custom.input`` becomes the arguments ``{"input": "<text>"}``,
    whose closing ``"}`` waits for the call's end (the next call, the finish reason or
    ``[DONE]``)."""

    __slots__ = ("_custom", "_provider")

    def __init__(self, provider: OpenAI) -> None:
        self._provider = provider
        self._custom: int | None = None  # the index of the custom call still open

    def parse(self, event: SSEEvent, out: list[Delta]) -> bool:
        """:meth:`Provider.parse_event` for this answer."""
        if event.data == "[DONE]":
            self._close(out)
            return True
        try:
            chunk = loads(event.data)
            if "error" in chunk:
                raise self._provider.error_from_payload(
                    chunk, status=None, model=chunk.get("model", "?")
                )
            choices = chunk.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta")
                # The hot paths, inline: a delta that is one piece of text, or one
                # function-call fragment, and nothing else.
                if delta and len(delta) == 1:
                    if type(content := delta.get("content")) is str:
                        if content:
                            out.append(TextDelta(content))
                    elif (
                        (calls := delta.get("tool_calls"))
                        and len(calls) == 1
                        and "custom" not in (call := calls[0])
                        and self._custom is None
                    ):
                        out.append(_tool_call_delta(call, 0))
                    else:
                        self._read_delta(delta, out)
                elif delta:
                    self._read_delta(delta, out)
                if choice.get("finish_reason") or choice.get("logprobs"):
                    if self._custom is not None and choice.get("finish_reason"):
                        self._close(out)
                    _read_choice_end(choice, out)
            elif chunk.get("object") == "error":  # vLLM: the error's keys at the top level
                raise self._provider.error_from_payload(
                    chunk, status=None, model=chunk.get("model", "?")
                )
            elif choices is None and "usage" not in chunk:
                raise KeyError("choices")
            if usage := chunk.get("usage"):
                out.append(UsageDelta(Usage.from_openai(usage)))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            raise UpstreamProtocolError(
                f"malformed chunk ({type(error).__name__}: {error}): {excerpt(event.data)}",
                provider=self._provider.entry_name,
            ) from None
        return False

    def _read_delta(self, delta: dict[str, Any], out: list[Delta]) -> None:
        """Every field of a delta: text, reasoning, tool-call fragments, and the rest kept."""
        content = delta.get("content")
        if content is not None:
            if not isinstance(content, str):
                raise TypeError("delta.content is not a string")
            if content:
                out.append(TextDelta(content))
        # Some servers send both names for the same text: take one.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            if not isinstance(reasoning, str):
                raise TypeError("delta reasoning is not a string")
            out.append(ReasoningDelta(reasoning))
        for position, call in enumerate(delta.get("tool_calls") or ()):
            # Servers that serialize every member of the union send `"custom": null`
            # beside a function: only a custom object makes a custom call.
            if call.get("custom") is not None:
                self._custom_call(call, position, out)
                continue
            if self._custom is not None and call.get("index", position) != self._custom:
                self._close(out)
            out.append(_tool_call_delta(call, position))
        extra = {k: v for k, v in delta.items() if k not in _DELTA_KEYS_HANDLED and v is not None}
        if extra:
            out.append(ExtraDelta(extra))

    def _custom_call(self, call: dict[str, Any], position: int, out: list[Delta]) -> None:
        """A fragment of a custom tool's call, ``{"index", "id", "type": "custom",
        "custom": {"name", "input"}}`` (later fragments: ``index`` and ``input`` only), as
        a fragment of the arguments ``{"input": "<text>"}``."""
        custom = call["custom"]
        index = call.get("index", position)
        name = custom.get("name") or None
        text = custom.get("input") or ""
        if type(index) is not int or type(text) is not str:
            raise TypeError("custom tool call index must be an integer and input a string")
        if name is not None and type(name) is not str:
            raise TypeError("custom tool call name must be a string")
        call_id = call.get("id") or None
        # The text as the inside of a JSON string: escaped, without its quotes.
        fragment = orjson.dumps(text)[1:-1].decode()
        if index == self._custom:
            if fragment or call_id or name:
                out.append(ToolCallDelta(index, call_id, name, fragment))
            return
        self._close(out)
        self._custom = index
        out.append(ToolCallDelta(index, call_id, name, '{"input": "' + fragment))

    def _close(self, out: list[Delta]) -> None:
        """End the open custom call's arguments, if one is open."""
        if self._custom is not None:
            out.append(ToolCallDelta(self._custom, arguments='"}'))
            self._custom = None


def _tool_call_delta(call: dict[str, Any], position: int) -> ToolCallDelta:
    function = call.get("function") or _NO_FUNCTION
    arguments = function.get("arguments") or ""
    name = function.get("name") or None
    index = call.get("index", position)
    if type(arguments) is not str or type(index) is not int:
        raise TypeError("tool call index must be an integer and arguments a string")
    if name is not None and type(name) is not str:
        raise TypeError("tool call name must be a string")
    return ToolCallDelta(index, call.get("id") or None, name, arguments)


_NO_FUNCTION: dict[str, Any] = {}


# Custom tools in the conversation sent upstream -----------------------------------------


def _custom_tool_names(tools: Iterable[dict[str, Any]] | None) -> frozenset[str]:
    """The names of the custom tools among ``tools`` (the request checked their shape)."""
    return frozenset(tool["custom"]["name"] for tool in tools or () if tool.get("type") == "custom")


def _with_custom_calls(message: Message, custom: frozenset[str]) -> dict[str, Any]:
    """``message`` as OpenAI takes it, its calls of a custom tool in the custom shape."""
    wire = message.as_openai()
    calls = wire.get("tool_calls")
    if calls and any(call["function"]["name"] in custom for call in calls):
        wire["tool_calls"] = [
            _custom_shape(call) if call["function"]["name"] in custom else call for call in calls
        ]
    return wire


def _custom_shape(call: dict[str, Any]) -> dict[str, Any]:
    """A function-shaped call of a custom tool as chat completions' custom call. The
    arguments are ``{"input": "<text>"}`` by polyroute's convention; arguments in any
    other form are sent as the text itself rather than refused."""
    arguments = call["function"]["arguments"]
    try:
        parsed = loads(arguments)
    except ValueError:
        parsed = None
    text = parsed.get("input") if isinstance(parsed, dict) else None
    custom = {
        "name": call["function"]["name"],
        "input": text if isinstance(text, str) else arguments,
    }
    return {"id": call["id"], "type": "custom", "custom": custom}
