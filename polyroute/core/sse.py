"""The one incremental Server-Sent-Events decoder.

Fed raw bytes in pieces of any size, it yields the same events whatever the
chunking. It follows the WHATWG event-stream rules (LF, CR and CRLF line ends;
``data:`` with or without one space; multi-line data; comments; ``event``, ``id``
and ``retry`` fields) with two deliberate differences:

- a final event not followed by a blank line is still delivered at end of input
  (upstreams that close right after their last ``data:`` line are common, and the
  g4f original lost that event);
- bytes that are not valid UTF-8, and lines longer than ``max_line_bytes``, raise
  :class:`UpstreamProtocolError` instead of being replaced or buffered without bound.

Lines are split on bytes before decoding: UTF-8 never uses the bytes of CR or LF
inside a multi-byte character, so a character split across reads is only ever
decoded whole.

``framing="lines"`` makes every ``data:`` line an event of its own, as the g4f
original (and DarkAI's seed) read their streams: upstreams that separate events with
a single newline rather than a blank line stream fine that way.

The module also holds the one encoder of OpenAI's streaming format
(:class:`OpenAIChunkEncoder`), used by everything of ours that speaks it.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal, NamedTuple, TypeAlias

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
from polyroute.core.errors import UpstreamProtocolError

Framing: TypeAlias = Literal["events", "lines"]

DEFAULT_MAX_LINE_BYTES = 1024 * 1024
_LINE_END = re.compile(rb"\r\n|\r|\n")
_EXCERPT = 120


class SSEEvent(NamedTuple):
    """One dispatched event. ``event`` defaults to ``"message"``.

    A NamedTuple rather than a frozen dataclass: one is made per chunk, and building a
    tuple costs a fraction of a frozen dataclass's per-field ``object.__setattr__``.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


def excerpt(text: str | bytes, limit: int = _EXCERPT) -> str:
    """A short, printable cut of ``text`` for error messages."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


class SSEDecoder:
    """Incremental decoder: :meth:`feed` bytes as they arrive, :meth:`close` at EOF.

    ``provider`` names the upstream in the errors it raises.
    """

    __slots__ = (
        "_data",
        "_event",
        "_id",
        "_pending",
        "_pending_size",
        "_per_line",
        "_retry",
        "_skip_lf",
        "_started",
        "max_line_bytes",
        "provider",
    )

    def __init__(
        self,
        *,
        provider: str | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        framing: Framing = "events",
    ) -> None:
        self.provider = provider
        self._per_line = framing == "lines"
        self.max_line_bytes = max_line_bytes
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._skip_lf = False
        self._started = False
        self._data: list[bytes] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode ``chunk`` and return the events it completes (often none or one)."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\n" not in chunk and b"\r" not in chunk:
            # No line end: keep the piece without joining, so a long line arriving
            # in many reads is copied once, not once per read.
            if chunk:
                self._pending.append(chunk)
                self._pending_size += len(chunk)
                if self._pending_size > self.max_line_bytes:
                    self._raise_line_too_long()
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending.clear()
        lines = _LINE_END.split(chunk) if b"\r" in chunk else chunk.split(b"\n")
        if chunk[-1:] == b"\r":
            # The LF of a CRLF may come in the next read; it must not count as a blank line.
            self._skip_lf = True
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
        self._pending_size = len(tail)
        if self._pending_size > self.max_line_bytes:
            self._raise_line_too_long()
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            # The hot path, inlined: nearly every line is "data: ..." or blank.
            if not line:
                self._dispatch(events)
                data = self._data
            elif line[:6] == b"data: ":
                if len(line) > self.max_line_bytes:
                    self._raise_line_too_long()
                data.append(line[6:])
                if self._per_line:
                    self._dispatch(events)
                    data = self._data
            else:
                if len(line) > self.max_line_bytes:
                    self._raise_line_too_long()
                self._process_line(line, events)
                data = self._data
        return events

    def close(self) -> list[SSEEvent]:
        """Signal end of input: return the last event even without a trailing blank line."""
        events: list[SSEEvent] = []
        if self._pending:
            line = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._process_line(line, events)
        self._dispatch(events)
        return events

    def _process_line(self, raw: bytes, events: list[SSEEvent]) -> None:
        """Any line but the common ``data: ...`` and blank ones (see :meth:`feed`)."""
        if not raw:
            self._dispatch(events)
            return
        if not self._started:
            self._started = True
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
        field, colon, value = raw.partition(b":")
        if not field:
            return  # a comment line (starts with ':'), kept alive by some upstreams
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value)
            if self._per_line:
                self._dispatch(events)
            return
        field_name, text = self._text(field), self._text(value)
        if field_name == "event":
            self._event = text
        elif field_name == "id" and "\0" not in text:
            self._id = text
        elif field_name == "retry" and text.isascii() and text.isdigit():
            self._retry = int(text)
        # Unknown fields are ignored, as the SSE specification requires.

    def _text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UpstreamProtocolError(
                f"invalid UTF-8 in event stream ({exc.reason} at byte {exc.start}): {excerpt(raw)}",
                provider=self.provider,
            ) from None

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            data = self._data
            raw = data[0] if len(data) == 1 else b"\n".join(data)
            events.append(
                SSEEvent(self._text(raw), self._event or "message", self._id, self._retry)
            )
            self._data = []
        # The id persists across events (it is the "last event id"); the type does not.
        self._event = ""
        self._retry = None

    def _raise_line_too_long(self) -> None:
        self._pending.clear()
        self._pending_size = 0
        raise UpstreamProtocolError(
            f"event stream line longer than {self.max_line_bytes} bytes; refusing to buffer it",
            provider=self.provider,
        )


def encode_event(payload: Any) -> bytes:
    """One SSE event carrying ``payload`` as JSON: ``data: {...}`` and a blank line."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def named_event(kind: str, payload: Any) -> bytes:
    """One SSE event of type ``kind`` carrying ``payload`` as JSON (Anthropic's and the
    Responses API's events): ``event: kind``, ``data: {...}`` and a blank line."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"
"""What ends an OpenAI-format stream."""

TEXT_MARKER = "\ue000"
"""A private-use character, which no fixed part of an event holds. An event encoded
with it in place of its text is cut around it once (:func:`cut_at_marker`); each
text's event is then those bytes joined around the text's JSON string: a fifth of the
cost of building and dumping the dict, and the bytes cannot differ from the dict's."""
_MARKER_JSON = orjson.dumps(TEXT_MARKER)


def cut_at_marker(encoded: bytes) -> tuple[bytes, bytes]:
    """The bytes of ``encoded`` before and after the JSON string of :data:`TEXT_MARKER`
    (its last one: the text comes after any name or id that might hold it)."""
    before, _, after = encoded.rpartition(_MARKER_JSON)
    return before, after


def openai_delta(delta: Delta) -> dict[str, Any] | None:
    """``delta`` as the ``choices[0].delta`` of an OpenAI chunk (``None`` for the
    deltas that travel elsewhere in a chunk: usage, finish, restart)."""
    if isinstance(delta, TextDelta):
        return {"content": delta.text}
    if isinstance(delta, ReasoningDelta):
        return {"reasoning_content": delta.text}
    if isinstance(delta, ToolCallDelta):
        call: dict[str, Any] = {"index": delta.index}
        function: dict[str, str] = {"arguments": delta.arguments}
        if delta.id is not None:
            call["id"] = delta.id
            call["type"] = "function"
        if delta.name is not None:
            function["name"] = delta.name
        call["function"] = function
        return {"tool_calls": [call]}
    if isinstance(delta, ExtraDelta):
        return dict(delta.fields)
    return None


class OpenAIChunkEncoder:
    """Encodes one answer as OpenAI's ``chat.completion.chunk`` events."""

    def __init__(self, model: str, *, id: str = "chatcmpl-polyroute", created: int | None = None):
        self._head = {
            "id": id,
            "object": "chat.completion.chunk",
            "created": int(time.time()) if created is None else created,
            "model": model,
        }
        # A text chunk's bytes around its text (see TEXT_MARKER).
        self._text_frame = cut_at_marker(encode_event(self.chunk({"content": TEXT_MARKER})))

    def chunk(
        self,
        delta: dict[str, Any] | None = None,
        *,
        finish_reason: str | None = None,
        usage: Usage | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """One chunk as a dict: ``delta`` in choice 0, or no choice at all for a
        usage-only chunk (``delta=None`` with no ``finish_reason``)."""
        payload: dict[str, Any] = dict(self._head)
        if delta is None and finish_reason is None:
            payload["choices"] = []
        else:
            payload["choices"] = [
                {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}
            ]
        if usage is not None:
            payload["usage"] = usage.as_dict()
        payload.update(extra)
        return payload

    def encode(self, delta: Delta) -> bytes:
        """``delta`` as one event (empty for a delta with no place in the format)."""
        if type(delta) is TextDelta:
            frame = self._text_frame
            return frame[0] + orjson.dumps(delta.text) + frame[1]
        if isinstance(delta, FinishDelta):
            return encode_event(self.chunk(finish_reason=delta.reason))
        if isinstance(delta, UsageDelta):
            return encode_event(self.chunk(usage=delta.usage))
        body = openai_delta(delta)
        return b"" if body is None else encode_event(self.chunk(body))
