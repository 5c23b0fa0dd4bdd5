"""OpenAI's Responses API (``POST /v1/responses``, ``GET /v1/responses/{id}``), as Codex
and the ``openai`` SDK speak it.

The request is translated (responses_request.py); the answer is written as output
items (``reasoning`` with a summary, ``message`` with ``output_text``,
``function_call``, ``custom_tool_call``) through the event sequence the SDK's stream
accumulator takes: ``response.created``, ``response.in_progress``, per item
``output_item.added``, its part and delta events, ``output_item.done``, then
``response.completed`` (``response.incomplete`` on a length stop). An answer that
cannot be completed ends with ``response.failed``, never ``response.completed``.

With ``store`` (the API's default) the response and the conversation it ends are kept
in the routing state for ``gateway.responses_ttl_s``, so that ``previous_response_id``
works from any gateway process sharing the state, and ``GET /v1/responses/{id}``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from orjson import dumps

from polyroute.core.deltas import (
    Delta,
    FinishDelta,
    ReasoningDelta,
    ReasoningSignatureDelta,
    RestartDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageDelta,
    WireDelta,
)
from polyroute.core.errors import InvalidRequestError, PolyrouteError, UpstreamProtocolError
from polyroute.core.request import NativeRequest
from polyroute.core.sse import TEXT_MARKER, cut_at_marker, named_event
from polyroute.core.wire import WireFormat
from polyroute.router.stream import RouterStream
from polyroute.server.dialects import Records, model_and_stream
from polyroute.server.dialects.chat import polyroute_facts, restart_error, takes_back_text
from polyroute.server.dialects.errors import WireError, classify, openai_error, own_failure
from polyroute.server.dialects.responses_request import input_items, translate

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
"""Finish reasons that leave a response incomplete, and the reason it then gives."""


class ResponseNotFoundError(InvalidRequestError):
    """A stored response asked for by id is not there (never stored, or expired)."""


def event(payload: dict[str, Any]) -> bytes:
    """One event, named by its ``type``."""
    return named_event(str(payload["type"]), payload)


def usage_body(usage: Usage | None) -> dict[str, Any] | None:
    """A :class:`Usage` as the Responses API reports it."""
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


class _Items:
    """Output items written from deltas, with their events (each numbered by
    ``sequence_number``); every item is also kept whole for the response object."""

    def __init__(self, response_id: str, custom_tools: frozenset[str]) -> None:
        self.output: list[dict[str, Any]] = []
        self.sequence = 0
        self._base = response_id.removeprefix("resp_")
        self._custom = custom_tools
        self._open: dict[str, Any] | None = None
        self._pieces: list[str] = []
        self._tool_index = -1
        self._text_head = b""  # an open message's text delta event, up to its text

    def emit(self, payload: dict[str, Any], out: list[bytes]) -> None:
        payload["sequence_number"] = self.sequence
        self.sequence += 1
        out.append(event(payload))

    def text(self, text: str, out: list[bytes]) -> None:
        """The hot path: a text delta's event from bytes cut once per message item
        (its ``sequence_number`` last), five times cheaper than building the event."""
        if not self._text_head:
            self._start_message(out)
        self._pieces.append(text)
        out.append(
            b'%b%b,"sequence_number":%d}\n\n' % (self._text_head, dumps(text), self.sequence)
        )
        self.sequence += 1

    def texts(self, texts: list[str], out: list[bytes]) -> None:
        """:meth:`text` for a run of texts (a relayed one), in one piece of bytes."""
        if not self._text_head:
            self._start_message(out)
        self._pieces += texts
        head, first = self._text_head, self.sequence
        out.append(
            b"".join(
                [
                    b'%b%b,"sequence_number":%d}\n\n' % (head, dumps(text), number)
                    for number, text in enumerate(texts, first)
                ]
            )
        )
        self.sequence = first + len(texts)

    def add(self, delta: Delta, out: list[bytes]) -> None:
        if type(delta) is TextDelta:
            self.text(delta.text, out)
        elif isinstance(delta, ToolCallDelta):
            self._tool_call(delta, out)
        elif isinstance(delta, ReasoningDelta):
            if self._kind() != "reasoning":
                self._start_reasoning(out)
            self._pieces.append(delta.text)
            self.emit(self._at({"type": "response.reasoning_summary_text.delta",
                                "summary_index": 0, "delta": delta.text}), out)  # fmt: skip
        elif isinstance(delta, ReasoningSignatureDelta) and self._kind() == "reasoning":
            self.close(out)

    def _kind(self) -> str | None:
        return None if self._open is None else str(self._open["type"])

    def _at(self, payload: dict[str, Any]) -> dict[str, Any]:
        assert self._open is not None
        payload["item_id"] = self._open["id"]
        payload["output_index"] = len(self.output) - 1
        return payload

    def _start(self, item: dict[str, Any], out: list[bytes]) -> None:
        self.close(out)
        self.output.append(item)
        self._open = item
        self._pieces = []
        added = {"type": "response.output_item.added", "output_index": len(self.output) - 1}
        self.emit({**added, "item": dict(item)}, out)

    def _start_message(self, out: list[bytes]) -> None:
        item_id = f"msg_{self._base}_{len(self.output)}"
        item = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant"}
        self._start({**item, "content": []}, out)
        part = {"type": "output_text", "text": "", "annotations": []}
        self.emit(self._at({"type": "response.content_part.added", "content_index": 0,
                            "part": part}), out)  # fmt: skip
        head = self._at({"type": "response.output_text.delta", "content_index": 0})
        head |= {"logprobs": [], "delta": TEXT_MARKER}  # the text last: the cut ends before it
        self._text_head = cut_at_marker(event(head))[0]

    def _start_reasoning(self, out: list[bytes]) -> None:
        item = {"id": f"rs_{self._base}_{len(self.output)}", "type": "reasoning", "summary": []}
        self._start(item, out)
        part = {"type": "summary_text", "text": ""}
        self.emit(self._at({"type": "response.reasoning_summary_part.added",
                            "summary_index": 0, "part": part}), out)  # fmt: skip

    def _tool_call(self, delta: ToolCallDelta, out: list[bytes]) -> None:
        if self._kind() not in ("function_call", "custom_tool_call") or (
            delta.index != self._tool_index
        ):
            self._tool_index = delta.index
            name = delta.name or ""
            call_id = delta.id or f"call_{self._base}_{delta.index}"
            number = len(self.output)
            if name in self._custom:
                item = {
                    "id": f"ctc_{self._base}_{number}",
                    "type": "custom_tool_call",
                    "status": "in_progress",
                    "call_id": call_id,
                    "name": name,
                    "input": "",
                }
            else:
                item = {"id": f"fc_{self._base}_{number}", "type": "function_call",
                        "status": "in_progress", "call_id": call_id, "name": name,
                        "arguments": ""}  # fmt: skip
            self._start(item, out)
        if delta.arguments:
            self._pieces.append(delta.arguments)
            if self._kind() == "function_call":
                self.emit(self._at({"type": "response.function_call_arguments.delta",
                                    "delta": delta.arguments}), out)  # fmt: skip

    def close(self, out: list[bytes]) -> None:
        """End the open item, with its done events."""
        item = self._open
        if item is None:
            return
        text = "".join(self._pieces)
        kind = item["type"]
        if kind == "message":
            part = {"type": "output_text", "text": text, "annotations": []}
            self.emit(self._at({"type": "response.output_text.done", "content_index": 0,
                                "text": text, "logprobs": []}), out)  # fmt: skip
            self.emit(self._at({"type": "response.content_part.done", "content_index": 0,
                                "part": part}), out)  # fmt: skip
            item["content"] = [{**part, "logprobs": []}]
        elif kind == "reasoning":
            part = {"type": "summary_text", "text": text}
            self.emit(self._at({"type": "response.reasoning_summary_text.done",
                                "summary_index": 0, "text": text}), out)  # fmt: skip
            self.emit(self._at({"type": "response.reasoning_summary_part.done",
                                "summary_index": 0, "part": part}), out)  # fmt: skip
            item["summary"] = [part]
        elif kind == "function_call":
            item["arguments"] = text
            self.emit(self._at({"type": "response.function_call_arguments.done",
                                "name": item["name"], "arguments": text}), out)  # fmt: skip
        elif kind == "custom_tool_call":
            item["input"] = _custom_input(text, item["name"])
            self.emit(self._at({"type": "response.custom_tool_call_input.delta",
                                "delta": item["input"]}), out)  # fmt: skip
            self.emit(self._at({"type": "response.custom_tool_call_input.done",
                                "input": item["input"]}), out)  # fmt: skip
        if "status" in item:
            item["status"] = "completed"
        self.emit(self._at({"type": "response.output_item.done", "item": item}), out)
        self._open = None
        self._pieces = []
        self._text_head = b""


def _custom_input(arguments: str, name: str) -> str:
    """A custom tool call's text, from the ``{"input": ...}`` its call travelled as."""
    try:
        value = orjson.loads(arguments or "{}").get("input", "")
    except (orjson.JSONDecodeError, AttributeError):
        raise UpstreamProtocolError(
            f"custom tool call {name!r} ended with arguments that are not its input"
        ) from None
    return value if isinstance(value, str) else orjson.dumps(value).decode()


@dataclass(slots=True)
class ResponsesExchange:
    """One ``/v1/responses`` request, and its answer's writer."""

    @property
    def pass_through(self) -> tuple[WireFormat, ...] | None:
        """A streamed answer takes an OpenAI-format upstream's text chunks as runs of
        texts, each written as an ``output_text`` delta."""
        return ("openai",) if self.stream else None

    model: str | None
    messages: Any
    options: dict[str, Any]
    native: NativeRequest | None
    stream: bool
    body: dict[str, Any]
    items: list[dict[str, Any]]
    """The conversation so far as input items (a previous response's included)."""
    custom_tools: frozenset[str]
    records: Records | None
    """Where the response is stored (``None``: ``store`` is off)."""
    ttl_s: float
    response_id: str = field(default_factory=lambda: f"resp_{secrets.token_hex(12)}")
    created_at: int = field(default_factory=lambda: int(time.time()))
    _items: _Items | None = None
    _finish: str | None = None
    _model: str = ""

    def opening(self, stream: RouterStream, request_id: str) -> list[bytes]:
        self._items = _Items(self.response_id, self.custom_tools)
        self._model = stream.model or stream.requested_model
        out: list[bytes] = []
        response = self._response("in_progress")
        self._items.emit({"type": "response.created", "response": response}, out)
        self._items.emit({"type": "response.in_progress", "response": response}, out)
        return out

    def encode(self, batch: list[Delta], out: list[bytes]) -> None:
        items = self._items
        assert items is not None, "opening() comes first"
        for delta in batch:
            if type(delta) is TextDelta:
                items.text(delta.text, out)
            elif type(delta) is WireDelta:
                items.texts(delta.texts, out)
            elif isinstance(delta, FinishDelta):
                self._finish = delta.reason
            elif isinstance(delta, RestartDelta):
                if takes_back_text(delta):
                    raise restart_error(delta)
                items.close(out)  # the cut reasoning item ends; the new one follows
            elif not isinstance(delta, UsageDelta):
                items.add(delta, out)

    def collect(self, batch: list[Delta]) -> None:
        for delta in batch:
            if isinstance(delta, RestartDelta):  # a whole new answer: forget the old one
                self._items = _Items(self.response_id, self.custom_tools)
            else:
                self.encode([delta], [])

    async def closing(self, stream: RouterStream) -> bytes:
        out: list[bytes] = []
        assert self._items is not None
        self._items.close(out)
        response = await self._finished(stream)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        self._items.emit({"type": kind, "response": response}, out)
        return b"".join(out)

    async def whole(self, stream: RouterStream, request_id: str) -> dict[str, Any]:
        return await self._finished(stream)

    def failure(self, error: WireError) -> bytes:
        out: list[bytes] = []
        items = self._items or _Items(self.response_id, self.custom_tools)
        message = error.body.get("error", {})
        response = self._response("failed")
        response["error"] = {
            "code": error.code or "server_error",
            "message": message.get("message"),
        }
        items.emit({"type": "response.failed", "response": response}, out)
        return b"".join(out)

    async def _finished(self, stream: RouterStream) -> dict[str, Any]:
        """The whole response object, stored when asked to be."""
        assert self._items is not None
        self._items.close([])
        reason = INCOMPLETE.get(self._finish or "")
        response = self._response("incomplete" if reason else "completed")
        response["output"] = self._items.output
        response["usage"] = usage_body(stream.usage)
        if reason:
            response["incomplete_details"] = {"reason": reason}
        response["polyroute"] = polyroute_facts(stream)
        if self.records is not None:
            kept = {"response": response, "items": [*self.items, *self._items.output]}
            await self.records.put_record(self.response_id, orjson.dumps(kept), self.ttl_s)
        return response

    def _response(self, status: str) -> dict[str, Any]:
        body = self.body
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self._model,
            "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "instructions": body.get("instructions"),
            "previous_response_id": body.get("previous_response_id"),
            "store": self.records is not None,
            "metadata": body.get("metadata"),
            "error": None,
            "incomplete_details": None,
            "usage": None,
        }


class ResponsesDialect:
    """``POST /v1/responses`` and ``GET /v1/responses/{id}``."""

    name = "responses"

    def __init__(self, records: Records, *, store: bool = True, ttl_s: float = 3600.0) -> None:
        self.records = records
        self.store = store
        self.ttl_s = ttl_s

    async def read(self, body: Any, headers: Mapping[str, str]) -> ResponsesExchange:
        model, stream = model_and_stream(body)
        store = body.get("store", True) is not False
        if body.get("store") is True and not self.store:
            raise InvalidRequestError(
                "store: this gateway keeps no responses (gateway.responses_store is false); "
                "send store: false and the whole conversation in input"
            )
        items = await self._previous(body) + input_items(body)
        translation = translate(body, items)
        native = NativeRequest("openai-responses", body, {}, tuple(translation.lost))
        records = self.records if store and self.store else None
        return ResponsesExchange(
            model,
            translation.messages,
            translation.options,
            native,
            stream,
            body,
            items,
            translation.custom_tools,
            records,
            self.ttl_s,
        )

    async def _previous(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        previous = body.get("previous_response_id")
        if previous is None:
            return []
        if not isinstance(previous, str):
            raise InvalidRequestError("previous_response_id: must be a string")
        return list((await self.stored(previous, "previous_response_id"))["items"])

    async def stored(self, response_id: str, what: str = "response") -> dict[str, Any]:
        """The stored record of ``response_id``; raises :class:`ResponseNotFoundError`."""
        kept = await self.records.get_record(response_id) if self.store else None
        if kept is None:
            raise ResponseNotFoundError(
                f"{what} {response_id!r} was not found: it was stored with store: false, has "
                "expired, or never existed"
            )
        record: dict[str, Any] = orjson.loads(kept)
        return record

    def error(self, error: PolyrouteError) -> WireError:
        if isinstance(error, ResponseNotFoundError):
            code = "previous_response_not_found" if "previous" in str(error) else "not_found"
            return openai_error(own_failure(404, str(error), code))
        return openai_error(classify(error))

    def refusal(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> WireError:
        return openai_error(own_failure(status, message, code, param))
