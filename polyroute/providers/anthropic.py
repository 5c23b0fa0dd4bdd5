"""Anthropic's Messages API, natively (``type: anthropic``).

POST ``{base_url}/v1/messages`` with ``stream: true``, key in ``x-api-key``, version in
``anthropic-version``. The OpenAI-shaped request is translated: system messages to the
top-level ``system``, tool calls and results to ``tool_use`` / ``tool_result`` blocks,
``tools`` to ``input_schema`` tools, and ``max_tokens`` is always sent. The answer comes
as named events (``message_start``, ``content_block_start/delta/stop``,
``message_delta``, ``message_stop``, ``ping``, ``error``); text, tool-call arguments
(``input_json_delta``) and thinking become the router's deltas. A cut answer is
continued by prefill (the conversation ends with the partial assistant text) or, as the
router asks (``prefill=False``: a model that refuses prefill, or reasoning), by an
instruction after it. A model's refusal of prefill is a :class:`PrefillRefusedError`.
For a consumer that writes these events itself (the gateway's ``/v1/messages``), plain
text deltas can come as the upstream sent them (:attr:`Provider.wire_format`,
core/anthropic_wire.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from polyroute.core.deltas import (
    Delta,
    ExtraDelta,
    FinishDelta,
    ReasoningDelta,
    ReasoningSignatureDelta,
    RedactedReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageDelta,
    token_count,
)
from polyroute.core.errors import (
    AuthenticationError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotSupportedError,
    PolyrouteError,
    PrefillRefusedError,
    RateLimitedError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from polyroute.core.http import fetch_answer
from polyroute.core.jsoncodec import loads
from polyroute.core.messages import CONTINUE_INSTRUCTION, Message, continuation_messages
from polyroute.core.request import ChatRequest
from polyroute.core.sse import SSEEvent, excerpt
from polyroute.core.wire import WireFormat
from polyroute.providers.compat import AsyncGeneratorProvider
from polyroute.providers.translate import (
    alternating_turns,
    call_arguments,
    custom_as_function,
    inline_media,
)

# Anthropic's stop reasons in OpenAI's words; others (pause_turn...) pass as they are.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# OpenAI request options and what they become; the others are dropped, with an event.
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "stop": "stop_sequences"}
_TAKEN = {"tools", "tool_choice", "parallel_tool_calls", "max_tokens", "max_completion_tokens"}
_TAKEN |= {*_SAMPLING, "user", "metadata"}
_COUNTED = ("messages", "system", "tools", "tool_choice", "thinking", "mcp_servers")
"""The keys of a Messages request that ``/v1/messages/count_tokens`` takes."""
_NATIVE_HEADERS = ("anthropic-beta",)
"""A native request's headers sent on: the client's beta features (Claude Code's)."""
_TOO_LONG = re.compile(r"prompt is too long|too many tokens|context (length|window)", re.I)
_NO_PREFILL = re.compile(r"does not support assistant message prefill|pre-?fill", re.I)
"""The API's 400 for a final assistant turn: "This model does not support assistant
message prefill. The conversation must end with a user message." (Claude Sonnet and
Opus 4.6 and later; quoted in Skyvern-AI/skyvern#4795 and decolua/9router#2302), and the
older "...would pre-fill the `assistant` response. When using tools, pre-filling the
`assistant` response is not supported." """


class Anthropic(AsyncGeneratorProvider):
    """Anthropic's Messages API (or a server speaking it)."""

    type_name = "anthropic"
    url = "https://www.anthropic.com"
    base_url = "https://api.anthropic.com"
    prices_from = "anthropic"
    api_endpoint = "https://api.anthropic.com/v1/messages"
    working = True
    needs_auth = True
    supports_system_message = True
    supports_message_history = True
    supports_continuation = True
    supports_tools = True
    supports_vision = True
    supports_prefill = True
    default_model = "claude-sonnet-4-5"
    end_event_name = "event: message_stop"
    wire_format: ClassVar[WireFormat | None] = "anthropic"
    accepted_options = frozenset(_TAKEN)
    native_format = "anthropic"
    max_tokens = 4096
    """Sent when the request has no ``max_tokens``: the API requires one."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        anthropic_version: str = "2023-06-01",
        anthropic_beta: str | None = None,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        headers = {"anthropic-version": anthropic_version, **(kwargs.pop("headers", None) or {})}
        if anthropic_beta:
            headers["anthropic-beta"] = anthropic_beta
        headers.setdefault("accept", "text/event-stream")
        headers.setdefault("content-type", "application/json")
        super().__init__(headers=headers, **kwargs)
        if base_url is not None:
            self.base_url = base_url.rstrip("/")
            if kwargs.get("api_endpoint") is None:
                self.api_endpoint = f"{self.base_url}/v1/messages"
        if max_tokens is not None:
            self.max_tokens = max_tokens

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    # The request -----------------------------------------------------------------

    def request_headers(self, request: ChatRequest) -> Mapping[str, str]:
        native = request.native
        if native is None or not self.takes_native(request):
            return self.headers
        headers = dict(self.headers)
        for name in _NATIVE_HEADERS:
            if value := native.headers.get(name):
                own = headers.get(name)
                headers[name] = f"{own},{value}" if own else value
        return headers

    def build_request(
        self,
        model: str,
        request: ChatRequest,
        *,
        continue_from: str | None = None,
        prefill: bool | None = None,
    ) -> dict[str, Any]:
        prefill = self.supports_prefill if prefill is None else prefill
        if request.native is not None and self.takes_native(request):
            return _native_body(model, request.native.body, continue_from, prefill=prefill)
        messages = request.messages
        if continue_from:
            # The API refuses a final assistant turn that ends in whitespace; what is cut
            # off here comes back, if the model writes it, and the router's seam drops
            # whatever it repeats. (Cut the same way by instruction, so that the parser
            # treats a leading space alike: see stream_parser.)
            messages = continuation_messages(messages, continue_from.rstrip(), prefill=prefill)
        system = [m.text() for m in messages if m.role in ("system", "developer")]
        turns = alternating_turns(
            (m for m in messages if m.role not in ("system", "developer")),
            _blocks,
            assistant="assistant",
            content_key="content",
        )
        options = request.options
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": options.get("max_tokens")
            or options.get("max_completion_tokens")
            or self.max_tokens,
            "messages": turns,
            "stream": True,
        }
        if system:
            body["system"] = "\n\n".join(system)
        for name, wire in _SAMPLING.items():
            if (value := options.get(name)) is not None:
                body[wire] = [value] if name == "stop" and isinstance(value, str) else value
        if options.get("user"):
            body["metadata"] = {"user_id": options["user"]}
        if tools := options.get("tools"):
            body["tools"] = [_tool(tool) for tool in tools]
            if choice := _tool_choice(options.get("tool_choice"), options):
                body["tool_choice"] = choice
        return body

    # The answer ------------------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if (
            cls.stream_parser is not Anthropic.stream_parser
            or cls.parse_event is not Anthropic.parse_event
        ):
            cls.wire_format = None  # its own reading of events must see every text delta

    def stream_parser(self, continue_from: str | None = None) -> _AnswerParser:
        # The prefill left out the partial answer's trailing whitespace (see
        # build_request): where the model writes it again, it is not sent twice.
        trimmed = continue_from[len(continue_from.rstrip()) :] if continue_from else ""
        return _AnswerParser(self, trimmed)

    def parse_event(self, event: SSEEvent, out: list[Delta]) -> bool:
        return _AnswerParser(self)(event, out)  # one event alone: no block state

    # Errors ------------------------------------------------------------------------

    def classify_status_error(self, error: UpstreamStatusError, model: str) -> PolyrouteError:
        try:
            payload = loads(error.body)
        except ValueError:
            return error
        if not isinstance(payload, dict) or not isinstance(payload.get("error"), dict):
            return error
        return self.error_from_payload(payload["error"], error.status, model, error.retry_after)

    def error_from_payload(
        self,
        detail: dict[str, Any],
        status: int | None,
        model: str,
        retry_after: float | None = None,
    ) -> PolyrouteError:
        """The typed error for Anthropic's ``{"type": ..., "message": ...}``."""
        kind, message = str(detail.get("type", "")), str(detail.get("message", detail))
        provider = self.entry_name
        if kind == "invalid_request_error" and _TOO_LONG.search(message):
            return ContextLengthExceededError(
                status or 400, provider=provider, body=message, retryable=False
            )
        if kind == "invalid_request_error" and status == 400 and _NO_PREFILL.search(message):
            return PrefillRefusedError(400, provider=provider, body=message, retryable=False)
        if kind == "not_found_error" and "model" in message.lower():
            return ModelNotSupportedError(model, provider=provider, detail=message)
        if kind in ("authentication_error", "permission_error"):
            auth_status = status or (401 if kind == "authentication_error" else 403)
            return AuthenticationError(
                auth_status, provider=provider, body=message, retryable=False
            )
        if kind == "rate_limit_error":
            return RateLimitedError(
                status or 429, provider=provider, body=message, retry_after=retry_after
            )
        if status is not None:
            return UpstreamStatusError(
                status, provider=provider, body=message, retry_after=retry_after
            )
        # Inside a stream: overloaded_error and api_error are worth another try.
        retryable = kind in ("overloaded_error", "api_error", "")
        return UpstreamError(
            f"error inside the stream: {kind}: {message}", provider=provider, retryable=retryable
        )

    # Token counts ------------------------------------------------------------------

    async def count_tokens(self, model: str, request: ChatRequest) -> int | None:
        """``POST /v1/messages/count_tokens``: exact, for the request as the client wrote
        it (or as translated), with only the keys that endpoint takes."""
        if request.native is not None and self.takes_native(request):
            body = dict(request.native.body)
        else:
            body = self.build_request(model, request)
        sent = {key: body[key] for key in _COUNTED if key in body}
        _raw, answer = await fetch_answer(
            self._sessions.session,
            f"{self.base_url}/v1/messages/count_tokens",
            provider=self.entry_name,
            headers={k: v for k, v in self.request_headers(request).items() if k != "accept"},
            proxy=self.proxy,
            timeouts=self.timeouts,
            body={**sent, "model": model},
        )
        try:
            return int(answer["input_tokens"])
        except (KeyError, TypeError, ValueError):
            raise UpstreamProtocolError(
                f"malformed token count: {excerpt(str(answer))}", provider=self.entry_name
            ) from None

    # Models ------------------------------------------------------------------------

    @property
    def models_url(self) -> str:
        return f"{self.base_url}/v1/models?limit=1000"


class _AnswerParser:
    """One answer's events: which content block is a tool call (and its number among
    the calls), and the usage ``message_start`` reported (given at once, so that the
    prompt's tokens are known even for an answer cut later; ``message_delta`` then
    adds what changed)."""

    __slots__ = ("_calls", "_provider", "_started", "_trimmed")

    def __init__(self, provider: Anthropic, trimmed: str = "") -> None:
        self._provider = provider
        self._calls: dict[int, int] = {}  # content block index -> tool call number
        self._started: dict[str, Any] = {}  # message_start's usage, output left out
        self._trimmed = trimmed  # whitespace the prefill left out, until the first text

    def __call__(self, event: SSEEvent, out: list[Delta]) -> bool:
        try:
            data = loads(event.data)
            kind = data["type"]
            if kind == "content_block_delta":
                self._delta(data["index"], data["delta"], out)
            elif kind == "content_block_start":
                self._block(data["index"], data["content_block"], out)
            elif kind == "message_delta":
                self._message_delta(data, out)
            elif kind == "message_stop":
                return True
            elif kind == "message_start":
                usage = data["message"].get("usage") or {}
                self._started = {**usage, "output_tokens": 0}
                out.append(UsageDelta(usage_of(self._started)))
            elif kind == "error":
                error = data["error"]
                raise self._provider.error_from_payload(error, None, "?")
            # ping, content_block_stop and event types added later carry no content.
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UpstreamProtocolError(
                f"malformed event ({type(error).__name__}: {error}): {excerpt(event.data)}",
                provider=self._provider.entry_name,
            ) from None
        return False

    def _delta(self, index: int, delta: dict[str, Any], out: list[Delta]) -> None:
        kind = delta["type"]
        if kind == "text_delta":
            text = _text(delta["text"])
            if self._trimmed:
                kept = text.lstrip()
                text = text[min(len(text) - len(kept), len(self._trimmed)) :]
                self._trimmed = ""
            if text:
                out.append(TextDelta(text))
        elif kind == "input_json_delta":
            if fragment := delta["partial_json"]:
                out.append(ToolCallDelta(self._calls[index], arguments=_text(fragment)))
        elif kind == "thinking_delta":
            if thinking := delta["thinking"]:
                out.append(ReasoningDelta(_text(thinking)))
        elif kind == "signature_delta":
            out.append(ReasoningSignatureDelta(_text(delta["signature"])))
        else:  # citations_delta...: kept, not typed
            out.append(ExtraDelta({"anthropic_delta": delta}))

    def _block(self, index: int, block: dict[str, Any], out: list[Delta]) -> None:
        kind = block["type"]
        if kind == "tool_use":
            number = self._calls[index] = len(self._calls)
            out.append(ToolCallDelta(number, _text(block["id"]), _text(block["name"]), ""))
        elif kind == "text":
            if block.get("text"):
                out.append(TextDelta(_text(block["text"])))
        elif kind == "thinking":
            if block.get("thinking"):
                out.append(ReasoningDelta(_text(block["thinking"])))
        elif kind == "redacted_thinking":
            out.append(RedactedReasoningDelta(_text(block["data"])))
        else:  # server tool use and results...: kept, not typed
            out.append(ExtraDelta({"anthropic_block": block}))

    def _message_delta(self, data: dict[str, Any], out: list[Delta]) -> None:
        delta = data["delta"]
        if reason := delta.get("stop_reason"):
            sequence = delta.get("stop_sequence")
            out.append(FinishDelta(FINISH_REASONS.get(reason, str(reason)), sequence or None))
        if usage := data.get("usage"):
            # Totals so far: what message_start gave is subtracted, not counted twice.
            total = usage_of({**self._started, **usage})
            out.append(UsageDelta(_minus(total, usage_of(self._started))))


def usage_of(fields: dict[str, Any]) -> Usage:
    """Anthropic's ``usage`` object as a :class:`Usage`: ``prompt_tokens`` counts every
    input token, cache reads and writes included (OpenAI's meaning), and the original
    figures stay in ``details``."""
    read = token_count(fields.get("cache_read_input_tokens"))
    written = token_count(fields.get("cache_creation_input_tokens"))
    prompt = token_count(fields.get("input_tokens")) + read + written
    completion = token_count(fields.get("output_tokens"))
    details = {k: v for k, v in fields.items() if k not in ("input_tokens", "output_tokens") and v}
    return Usage(prompt, completion, prompt + completion, details)


def _minus(total: Usage, given: Usage) -> Usage:
    """What ``total`` adds to ``given`` (``Usage`` adds details up, numbers included)."""
    return Usage(
        total.prompt_tokens - given.prompt_tokens,
        total.completion_tokens - given.completion_tokens,
        total.total_tokens - given.total_tokens,
        _difference(total.details, given.details),
    )


def _difference(total: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    for key, value in total.items():
        before = given.get(key)
        if value == before:
            continue
        if isinstance(value, int) and isinstance(before, int):
            changed[key] = value - before
        elif isinstance(value, dict) and isinstance(before, dict):
            changed[key] = _difference(value, before)
        else:
            changed[key] = value
    return changed


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


# Translating the conversation ---------------------------------------------------------


def _native_body(
    model: str, body: Mapping[str, Any], continue_from: str | None, *, prefill: bool
) -> dict[str, Any]:
    """A client's own Messages request, for ``model``, streamed; a continuation adds the
    partial answer as the final assistant turn (prefill), then, by instruction, a user
    turn asking to continue it. Prefill and extended thinking do not go together in the
    API, so a continuation by prefill asks for no thinking; by instruction, thinking
    stays as the client asked."""
    sent = {**body, "model": model, "stream": True}
    if continue_from:
        partial = {"type": "text", "text": continue_from.rstrip()}
        messages = list(sent.get("messages") or [])
        last = messages[-1] if messages else None
        if isinstance(last, dict) and last.get("role") == "assistant":
            content = last.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            messages[-1] = {**last, "content": [*(blocks or []), partial]}
        else:
            messages.append({"role": "assistant", "content": [partial]})
        if prefill:
            sent.pop("thinking", None)
        else:
            messages.append({"role": "user", "content": CONTINUE_INSTRUCTION})
        sent["messages"] = messages
    return sent


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [
            {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.text()}
        ]
    blocks: list[dict[str, Any]] = []
    if isinstance(message.content, str):
        if message.content:
            blocks.append({"type": "text", "text": message.content})
    else:
        blocks += [_part(part.model_dump()) for part in message.content or []]
    for call in message.tool_calls or []:
        arguments = call_arguments(call, "Anthropic")
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments}
        )
    return blocks


def _part(part: dict[str, Any]) -> dict[str, Any]:
    if part["type"] == "text":
        return {"type": "text", "text": part["text"]}
    if part["type"] == "image_url":
        url = part["image_url"]["url"]
        if inline := inline_media(url):
            source = {"type": "base64", "media_type": inline[0], "data": inline[1]}
        else:
            source = {"type": "url", "url": url}
        return {"type": "image", "source": source}
    raise InvalidRequestError(f"a {part['type']} content part cannot be sent to Anthropic")


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    if tool.get("type") == "custom":
        function = custom_as_function(tool["custom"])
    translated = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        translated["description"] = function["description"]
    return translated


def _tool_choice(choice: Any, options: dict[str, Any]) -> dict[str, Any] | None:
    if choice is None and options.get("parallel_tool_calls") is not False:
        return None
    if isinstance(choice, dict):
        named = choice["custom"] if choice.get("type") == "custom" else choice["function"]
        translated: dict[str, Any] = {"type": "tool", "name": named["name"]}
    else:
        kinds = {None: "auto", "auto": "auto", "required": "any", "none": "none"}
        translated = {"type": kinds.get(choice, "auto")}
    if options.get("parallel_tool_calls") is False and translated["type"] != "none":
        translated["disable_parallel_tool_use"] = True
    return translated
