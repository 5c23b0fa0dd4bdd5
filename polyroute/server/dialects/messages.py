"""Anthropic's Messages API (``POST /v1/messages``), as Claude Code and the ``anthropic``
SDK speak it.

The request is translated for entries of other formats (messages_request.py) and kept
as written for Anthropic-format entries (``NativeRequest``). The answer is written in
Anthropic's event grammar: ``message_start`` (with usage), one run of
``content_block_start`` / ``content_block_delta`` / ``content_block_stop`` per block
(text, thinking with its signature, redacted thinking, tool use), ``ping``,
``message_delta`` (stop reason, usage) and ``message_stop``; or, not streamed, one
``message`` object made of the same blocks. Errors are Anthropic error objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from polyroute.core.deltas import (
    Delta,
    ExtraDelta,
    FinishDelta,
    ReasoningDelta,
    ReasoningSignatureDelta,
    RedactedReasoningDelta,
    RestartDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageDelta,
    WireDelta,
)
from polyroute.core.errors import PolyrouteError, UpstreamProtocolError
from polyroute.core.request import NativeRequest
from polyroute.core.sse import TEXT_MARKER, cut_at_marker, named_event
from polyroute.core.wire import WireFormat
from polyroute.router.stream import RouterStream
from polyroute.server.dialects import model_and_stream
from polyroute.server.dialects.chat import (
    polyroute_facts,
    restart_error,
    rewritten,
    takes_back_text,
)
from polyroute.server.dialects.errors import Failure, WireError, classify, own_failure
from polyroute.server.dialects.messages_request import translate

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
"""The router's finish reasons in Anthropic's words; others (pause_turn) pass as they are."""
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""Anthropic's error type for each status its SDK maps to an exception; others: api_error."""
PASSED_HEADERS = ("anthropic-beta",)


def usage_body(usage: Usage | None) -> dict[str, int]:
    """A :class:`Usage` as Anthropic reports it: input tokens apart from cache reads
    and writes."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    read, written = usage.cache_read_tokens, usage.cache_write_tokens
    return {
        "input_tokens": max(0, usage.prompt_tokens - read - written),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
    }


class _Blocks:
    """The answer's content blocks, written from deltas: each kind of delta opens its
    own block (a signature closes a thinking block; a new tool call index opens a new
    tool-use block). The blocks are also kept, for a non-streamed answer: a block's
    pieces are joined when it closes, so no growing string is copied per delta."""

    def __init__(self, request_id: str) -> None:
        self.content: list[dict[str, Any]] = []
        self._request_id = request_id
        self._open: str | None = None  # the kind of the open block
        self._pieces: list[str] = []  # of the open block: text, thinking or arguments
        self._tool_index = -1
        self._text_frame = (b"", b"")

    def add(self, delta: Delta, out: list[bytes]) -> None:
        if type(delta) is TextDelta:
            if self._open != "text":
                self._text(out)
            self._pieces.append(delta.text)
            out.append(self._text_frame[0] + orjson.dumps(delta.text) + self._text_frame[1])
        elif type(delta) is WireDelta:
            self.relay(delta, out)
        elif isinstance(delta, ToolCallDelta):
            self._tool_call(delta, out)
        elif isinstance(delta, ReasoningDelta):
            self._thinking(out)
            self._pieces.append(delta.text)
            out.append(self._event({"type": "thinking_delta", "thinking": delta.text}))
        elif isinstance(delta, ReasoningSignatureDelta):
            self._thinking(out)
            self.content[-1]["signature"] = delta.signature
            out.append(self._event({"type": "signature_delta", "signature": delta.signature}))
            self.close(out)
        elif isinstance(delta, RedactedReasoningDelta):
            self._start({"type": "redacted_thinking", "data": delta.data}, out)
            self.close(out)
        elif isinstance(delta, ExtraDelta):
            self._extra(delta.fields, out)

    def relay(self, delta: WireDelta, out: list[bytes]) -> None:
        """Text deltas as an Anthropic upstream sent them, in the open text block (or a
        new one, as for a :class:`TextDelta`), saying its index: the upstream numbers
        its own blocks, which this answer may not show as it did (a block it sent
        empty, two text blocks in a row, another entry's blocks before a restart).
        Encoded anew when the index cannot be rewritten in every one of them, and an
        OpenAI upstream's run (no index: its chunks are not Messages events) always."""
        if self._open != "text":
            self._text(out)
        texts = delta.texts
        self._pieces += texts
        ours = str(self._index).encode()
        data = rewritten(delta.data, b'"index":', delta.index, ours, len(texts))
        if data is None:  # an OpenAI upstream's run has no index: always encoded anew
            before, after = self._text_frame
            data = b"".join([before + orjson.dumps(text) + after for text in texts])
        out.append(data)

    def close(self, out: list[bytes]) -> None:
        """End the open block, if any."""
        kind = self._open
        if kind is None:
            return
        block = self.content[-1]
        if kind == "tool_use":
            block["input"] = _arguments(self._pieces, block["name"])
        elif kind in ("text", "thinking"):
            block[kind] = "".join(self._pieces)
        self._open = None
        self._pieces = []
        out.append(
            named_event("content_block_stop", {"type": "content_block_stop", "index": self._index})
        )

    @property
    def _index(self) -> int:
        return len(self.content) - 1

    def _start(self, block: dict[str, Any], out: list[bytes]) -> None:
        self.close(out)
        self.content.append(block)
        self._open = block["type"]
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        out.append(named_event("content_block_start", start))

    def _text(self, out: list[bytes]) -> None:
        self._start({"type": "text", "text": ""}, out)
        # The bytes around a text delta's JSON string, cut once per block.
        marked = self._event({"type": "text_delta", "text": TEXT_MARKER})
        self._text_frame = cut_at_marker(marked)

    def _event(self, delta: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return named_event("content_block_delta", payload)

    def _thinking(self, out: list[bytes]) -> None:
        if self._open != "thinking":
            self._start({"type": "thinking", "thinking": "", "signature": ""}, out)

    def _tool_call(self, delta: ToolCallDelta, out: list[bytes]) -> None:
        if self._open != "tool_use" or delta.index != self._tool_index:
            self._tool_index = delta.index
            call_id = delta.id or f"toolu_{self._request_id}_{delta.index}"
            block = {"type": "tool_use", "id": call_id, "name": delta.name or "", "input": {}}
            self._start(block, out)
        if delta.arguments:
            self._pieces.append(delta.arguments)
            out.append(self._event({"type": "input_json_delta", "partial_json": delta.arguments}))

    def _extra(self, fields: dict[str, Any], out: list[bytes]) -> None:
        """Anthropic's blocks and deltas polyroute has no type for, as they came."""
        if isinstance(block := fields.get("anthropic_block"), dict):
            self._start(dict(block), out)
            self.close(out)
        elif isinstance(delta := fields.get("anthropic_delta"), dict) and self._open:
            out.append(self._event(delta))


def _arguments(pieces: list[str], name: str) -> Any:
    text = "".join(pieces)
    if not text:
        return {}
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(
            f"tool call {name!r} ended with arguments that are not JSON"
        ) from None


@dataclass(slots=True)
class MessagesExchange:
    """One ``/v1/messages`` request, and its answer's writer."""

    model: str | None
    messages: Any
    options: dict[str, Any]
    native: NativeRequest | None
    stream: bool
    _blocks: _Blocks = field(default_factory=lambda: _Blocks(""))
    _id: str = ""
    _model: str = ""
    _finish: FinishDelta | None = None
    _started: bool = False

    @property
    def pass_through(self) -> tuple[WireFormat, ...] | None:
        """A streamed answer takes an Anthropic-format upstream's text deltas as they
        came (their block's index rewritten where this answer numbers it otherwise),
        and an OpenAI-format upstream's text chunks as runs of texts."""
        return ("anthropic", "openai") if self.stream else None

    def opening(self, stream: RouterStream, request_id: str) -> list[bytes]:
        self._blocks = _Blocks(request_id)
        self._id = f"msg_{request_id}"
        self._model = stream.model or stream.requested_model
        return []  # message_start waits for the first batch: it may carry the usage

    def encode(self, batch: list[Delta], out: list[bytes]) -> None:
        if not self._started:
            self._start(batch, out)
        blocks = self._blocks
        for delta in batch:
            if type(delta) is TextDelta or type(delta) is ToolCallDelta:
                blocks.add(delta, out)
            elif type(delta) is WireDelta:
                blocks.relay(delta, out)
            elif isinstance(delta, FinishDelta):
                self._finish = delta
            elif isinstance(delta, RestartDelta):
                if takes_back_text(delta):
                    raise restart_error(delta)
                blocks.close(out)  # the cut thinking block ends; the new one follows
            elif not isinstance(delta, UsageDelta):
                blocks.add(delta, out)

    def collect(self, batch: list[Delta]) -> None:
        for delta in batch:
            if isinstance(delta, RestartDelta):
                self._blocks = _Blocks(self._id.removeprefix("msg_"))  # a whole new answer
            elif isinstance(delta, FinishDelta):
                self._finish = delta
            elif not isinstance(delta, UsageDelta):
                self._blocks.add(delta, [])

    def _start(self, first: list[Delta], out: list[bytes]) -> None:
        """``message_start``, with the usage an upstream reported before its answer."""
        self._started = True
        usage = None
        for delta in first:
            if isinstance(delta, UsageDelta):
                usage = delta.usage if usage is None else usage + delta.usage
        message = {**self._message(), "content": [], "stop_reason": None}
        message["usage"] = usage_body(usage)
        out.append(named_event("message_start", {"type": "message_start", "message": message}))
        out.append(named_event("ping", {"type": "ping"}))

    def _message(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "stop_sequence": None,
        }

    def _stop(self) -> dict[str, Any]:
        finish = self._finish
        if finish is None:
            return {"stop_reason": "end_turn", "stop_sequence": None}
        if finish.stop_sequence is not None:
            return {"stop_reason": "stop_sequence", "stop_sequence": finish.stop_sequence}
        return {
            "stop_reason": STOP_REASONS.get(finish.reason, finish.reason),
            "stop_sequence": None,
        }

    async def closing(self, stream: RouterStream) -> bytes:
        out: list[bytes] = []
        self._blocks.close(out)
        delta = {
            "type": "message_delta",
            "delta": self._stop(),
            "usage": usage_body(stream.usage),
            "polyroute": polyroute_facts(stream),
        }
        out.append(named_event("message_delta", delta))
        out.append(named_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def failure(self, error: WireError) -> bytes:
        return named_event("error", error.body)

    async def whole(self, stream: RouterStream, request_id: str) -> dict[str, Any]:
        self._blocks.close([])
        return {
            **self._message(),
            "content": self._blocks.content,
            **self._stop(),
            "usage": usage_body(stream.usage),
        }


class MessagesDialect:
    """``POST /v1/messages`` (``?beta=true`` as Claude Code sends it is accepted)."""

    name = "messages"

    async def read(self, body: Any, headers: Mapping[str, str]) -> MessagesExchange:
        model, stream = model_and_stream(body)
        translation = translate(body)
        passed = {name: value for name in PASSED_HEADERS if (value := headers.get(name))}
        native = NativeRequest("anthropic", body, passed, tuple(translation.lost))
        return MessagesExchange(model, translation.messages, translation.options, native, stream)

    def error(self, error: PolyrouteError) -> WireError:
        failure = classify(error)
        if failure.overloaded:
            failure = Failure(529, failure.kind, failure.code, failure.message)
        return anthropic_error(failure)

    def refusal(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> WireError:
        return anthropic_error(own_failure(status, message, code, param))


def anthropic_error(failure: Failure) -> WireError:
    """``failure`` as Anthropic's error object, whose ``type`` its SDK reads."""
    kind = ERROR_TYPES.get(failure.status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": failure.message}}
    return WireError(failure.status, body, failure.retry_after, failure.code)
