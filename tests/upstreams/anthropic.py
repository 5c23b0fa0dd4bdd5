"""A local server speaking Anthropic's streaming Messages API (POST /v1/messages).

Written from the public API reference: named SSE events, ``message_start`` (with the
prompt's usage), one ``content_block_start`` / ``_delta`` / ``_stop`` run per block,
``message_delta`` (stop reason, output usage) and ``message_stop``; ``ping`` after the
start, as the API sends it. Every event is checked against the ``anthropic`` package's
own types before it is sent.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.upstreams.scripted import Chunk, Script, ScriptedUpstream
from tests.upstreams.server import RecordedRequest

_EVENT = TypeAdapter(RawMessageStreamEvent)
STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}
NO_PREFILL = (
    "This model does not support assistant message prefill. "
    "The conversation must end with a user message."
)
"""The API's words for a final assistant turn to a model that takes none (Claude
Sonnet/Opus 4.6 and later), as quoted from real 400s in Skyvern-AI/skyvern#4795 and
decolua/9router#2302."""


def anthropic_events(*payloads: dict[str, Any] | bytes, compact: bool = True) -> bytes:
    """An answer's bytes as the API frames them: each payload under ``event: <its
    type>``, its data (compact JSON, as the API writes it, or spaced as Python's
    ``json`` does) and a blank line; bytes are one event's data as they are, named
    ``content_block_delta`` (a malformed or odd text delta)."""

    def framed(payload: dict[str, Any] | bytes) -> bytes:
        if isinstance(payload, bytes):
            name, data = b"content_block_delta", payload
        else:
            name = str(payload["type"]).encode()
            separators = (",", ":") if compact else (", ", ": ")
            data = json.dumps(payload, separators=separators, ensure_ascii=False).encode()
        return b"event: " + name + b"\ndata: " + data + b"\n\n"

    return b"".join(map(framed, payloads))


def message_start(model: str = "claude-upstream") -> list[dict[str, Any]]:
    """An answer's first events: its ``message_start`` (``msg_upstream``, 3 tokens in) and
    a ``ping``."""
    return [{"type": "message_start", "message": _opening("msg_upstream", model)}, {"type": "ping"}]


def _opening(message_id: str, model: str, **usage: Any) -> dict[str, Any]:
    """The message a ``message_start`` carries: empty, 3 tokens in, 1 out (or ``usage``)."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1, **usage},
    }


def block_start(index: int, kind: str = "text", **fields: Any) -> dict[str, Any]:
    """A ``content_block_start`` of an empty block of ``kind``, with ``fields``."""
    empty = {"text": {"text": ""}, "thinking": {"thinking": "", "signature": ""}}
    content = {"type": kind, **empty.get(kind, {}), **fields}
    return {"type": "content_block_start", "index": index, "content_block": content}


def block_delta(
    index: int, text: str, kind: str = "text_delta", key: str = "text"
) -> dict[str, Any]:
    """A ``content_block_delta`` of ``kind`` saying ``text`` under ``key``."""
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, key: text}}


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_end(reason: str = "end_turn") -> list[dict[str, Any]]:
    """An answer's last events: its ``message_delta`` (9 tokens out) and ``message_stop``."""
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": None},
        "usage": {"output_tokens": 9},
    }
    return [message_delta, {"type": "message_stop"}]


def anthropic_error(kind: str, message: str, request_id: str | None = None) -> str:
    """A non-2xx body as the API writes it (with its ``request_id`` when given)."""
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return json.dumps(body)


class AnthropicUpstream(ScriptedUpstream):
    """A script's chunk is a piece of text, or one of ``{"tool_use": {"id", "name",
    "json": [fragments]}}``, ``{"thinking": text, "signature": ...}`` (signature
    ``sig`` unless given), ``{"redacted_thinking": data}``, ``{"error": {"type",
    "message"}}`` (an ``event: error`` inside the stream). A script's ``usage`` is added
    to ``message_start``'s."""

    def __init__(self, default: Script | None = None, models: list[str] | None = None) -> None:
        super().__init__("/v1/messages", default)
        self.models = models or ["claude-local-large", "claude-local-small"]
        self._block = -1  # the open content block, for the answer being encoded
        self._block_type: str | None = None
        self._outputs = 0
        self.token_count = 42
        """What ``/v1/messages/count_tokens`` answers."""
        self.counted: list[Any] = []
        """The bodies ``/v1/messages/count_tokens`` was sent."""
        self.refuses_prefill = False
        """Answer a conversation that ends with an assistant turn as the real API does
        for Claude Sonnet/Opus 4.6 and later: 400 ``invalid_request_error``."""
        self.prefills_refused = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> AnthropicUpstream:
        await super().start()
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/v1/models":
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in self.models
            ]
            return web.json_response(
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"],
                    "last_id": data[-1]["id"],
                }
            )
        if request.method == "POST" and request.path == "/v1/messages/count_tokens":
            body = await request.json()
            self.counted.append(body)
            return web.json_response({"input_tokens": self.token_count})
        return await super()._handle(request)

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if self.refuses_prefill and _ends_with_assistant(record.body):
            self.prefills_refused += 1
            body = anthropic_error("invalid_request_error", NO_PREFILL, "req_011CprefillLocal")
            return web.Response(status=400, text=body, content_type="application/json")
        return await super()._answer(request, record)

    def _event(self, payload: dict[str, Any], script: Script) -> bytes:
        if payload["type"] not in ("error", "ping"):  # the SDK reads these two apart
            _EVENT.validate_python(payload)
        end = script.line_end
        return (
            b"event: "
            + payload["type"].encode()
            + end
            + self.frame(json.dumps(payload).encode(), end)
        )

    def _open(self, kind: str, block: dict[str, Any], script: Script) -> bytes:
        out = self._close(script)
        self._block += 1
        self._block_type = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        return out + self._event(start, script)

    def _close(self, script: Script) -> bytes:
        if self._block_type is None:
            return b""
        self._block_type = None
        return self._event({"type": "content_block_stop", "index": self._block}, script)

    def _delta(self, delta: dict[str, Any], script: Script) -> bytes:
        self._outputs += 1
        return self._event(
            {"type": "content_block_delta", "index": self._block, "delta": delta}, script
        )

    def encode_chunk(self, index: int, text: Chunk, script: Script, request: Any) -> bytes:
        out = b""
        if index == 0:
            self._block, self._block_type, self._outputs = -1, None, 0
            model = str(request.get("model", "?")) if isinstance(request, dict) else "?"
            message = _opening("msg_local", model, **(script.usage or {}))
            out += self._event({"type": "message_start", "message": message}, script)
            out += self._event({"type": "ping"}, script)
        if isinstance(text, str):
            if self._block_type != "text":
                out += self._open("text", {"type": "text", "text": ""}, script)
            return out + self._delta({"type": "text_delta", "text": text}, script)
        if "tool_use" in text:
            call = text["tool_use"]
            block = {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}
            out += self._open("tool_use", block, script)
            for fragment in call["json"]:
                out += self._delta({"type": "input_json_delta", "partial_json": fragment}, script)
            return out
        if "thinking" in text:
            out += self._open(
                "thinking", {"type": "thinking", "thinking": "", "signature": ""}, script
            )
            if text["thinking"]:  # empty: thinking the client asked not to display
                out += self._delta({"type": "thinking_delta", "thinking": text["thinking"]}, script)
            signature = text.get("signature", "sig")
            return out + self._delta({"type": "signature_delta", "signature": signature}, script)
        if "redacted_thinking" in text:
            block = {"type": "redacted_thinking", "data": text["redacted_thinking"]}
            return out + self._open("redacted_thinking", block, script)
        if "error" in text:
            return out + self._event({"type": "error", "error": text["error"]}, script)
        raise ValueError(f"unknown script chunk {text!r}")

    def encode_end(self, script: Script, request: Any) -> bytes:
        out = self._close(script)
        reason = STOP_REASONS.get(script.finish_reason, script.finish_reason)
        usage = {"output_tokens": self._outputs}
        delta = {"stop_reason": reason, "stop_sequence": None}
        out += self._event({"type": "message_delta", "delta": delta, "usage": usage}, script)
        return out + self._event({"type": "message_stop"}, script)


def _ends_with_assistant(body: Any) -> bool:
    messages = (body.get("messages") if isinstance(body, dict) else None) or [{}]
    return bool(messages[-1].get("role") == "assistant")
