"""Relaying an OpenAI-format answer's text chunks as the upstream sent them.

When the consumer speaks the upstream's format (the gateway's chat completions to an
OpenAI-compatible entry), a chunk that is nothing but the next piece of text needs no
new encoding. :class:`PassThroughReader` hands runs of such chunks on as their bytes
(:class:`WireDelta`), and every other event (the role chunk, tool calls, reasoning,
the finish reason, usage, errors, ``[DONE]``) as a decoded :class:`SSEEvent` for the
provider's parser, as without it.

Each read's chunks are still decoded, in one ``orjson.loads`` call for all of them: a
malformed chunk must never reach the consumer (such a read goes to the SSE decoder
and the parser raises at the chunk, after delivering what came before it, as without
pass-through), the router counts the text delivered (a relay continues from it), and
telling plain text from the rest needs the contents. What is saved is all the work per
chunk after that: event objects, typed deltas, a new chunk's encoding.

A read is split only where it is ``data: {...}`` lines between blank lines, with LF
line ends: anything else in it (CR line ends, comments, ``event:`` or ``id:`` fields,
a ``data`` over several lines, JSON spread over lines) sends the read to the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

from polyroute.core.deltas import WireDelta
from polyroute.core.jsoncodec import loads
from polyroute.core.sse import SSEDecoder, SSEEvent

WireFormat: TypeAlias = Literal["openai"]
"""The formats whose text chunks can be relayed as they came: OpenAI's chat chunks."""

Relayed: TypeAlias = SSEEvent | WireDelta
"""What a read of a passed-through answer yields: runs of text chunks, and the rest."""

_SEPARATOR = b"\n\ndata: "
_DONE = b"[DONE]"


class PassThroughReader:
    """Splits an OpenAI-format event stream into :class:`WireDelta` runs of plain text
    chunks and decoded events, fed raw bytes as they arrive (as :class:`SSEDecoder`,
    which it uses for everything it does not relay itself)."""

    __slots__ = ("_decoder", "_off", "_pending", "_pending_size")

    def __init__(self, decoder: SSEDecoder) -> None:
        self._decoder = decoder
        self._pending: list[bytes] = []
        """The bytes after the last blank line read: an event not complete yet."""
        self._pending_size = 0
        self._off = False
        """The stream is not framed as this reader splits: the decoder takes it all."""

    def feed(self, data: bytes) -> Sequence[Relayed]:
        """The events ``data`` completes: runs of text chunks, and decoded events."""
        if self._off:
            return self._decoder.feed(data)
        if b"\r" in data:
            # CR line ends (JSON never holds a raw CR): framing this reader does not split.
            return self._hand_over(data)
        pending = self._pending
        if pending:
            straddles = data[:1] == b"\n" and pending[-1][-1:] == b"\n"
            if b"\n\n" not in data and not straddles:
                return self._keep(data)
            pending.append(data)
            data = b"".join(pending)
            pending.clear()
            self._pending_size = 0
        cut = data.rfind(b"\n\n") + 2
        if cut == 1:  # no blank line yet
            return self._keep(data)
        if cut < len(data):
            self._keep(data[cut:])
            data = data[:cut]
        return self._split(data)

    def close(self) -> list[Relayed]:
        """End of input: what the decoder makes of an event left without its blank line."""
        events: list[Relayed] = []
        if self._pending:
            events += self._decoder.feed(self._take())
        events += self._decoder.close()
        return events

    def _keep(self, data: bytes) -> Sequence[Relayed]:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > self._decoder.max_line_bytes:
            return self._hand_over(b"")  # the decoder refuses a line that long
        return []

    def _take(self) -> bytes:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        return data

    def _hand_over(self, data: bytes) -> Sequence[Relayed]:
        """From here on, every byte goes to the decoder."""
        self._off = True
        return self._decoder.feed(self._take() + data)

    def _split(self, events: bytes) -> Sequence[Relayed]:
        """Whole events (``events`` ends with a blank line): text chunks relayed, the
        rest decoded; all of it decoded unless it is only ``data: {...}`` events."""
        if events[:6] != b"data: ":
            return self._decoder.feed(events)
        pieces = events[6:-2].split(_SEPARATOR)
        done = pieces[-1] == _DONE
        if done:
            pieces.pop()
        if not pieces or events.count(b"\n") != 2 * (len(pieces) + done):
            return self._decoder.feed(events)
        try:
            chunks = loads(b"[" + b",".join(pieces) + b"]")
        except ValueError:
            return self._decoder.feed(events)  # it raises at the malformed event
        if len(chunks) != len(pieces):  # a piece held more than one value
            return self._decoder.feed(events)
        out: list[Relayed] = []
        start = 0
        texts: list[str] = []
        for index, chunk in enumerate(chunks):
            text = plain_text(chunk)
            if text is not None:
                texts.append(text)
                continue
            if texts:
                out.append(_run(pieces, start, index, texts, chunks[start]))
                texts = []
            out.append(SSEEvent(pieces[index].decode()))
            start = index + 1
        if texts and start == 0 and not done:  # the whole read: its bytes as they are
            out.append(WireDelta(events, texts, chunks[0].get("id"), chunks[0].get("model")))
        elif texts:
            out.append(_run(pieces, start, len(pieces), texts, chunks[start]))
        if done:
            out.append(SSEEvent(_DONE.decode()))
        return out


def _run(
    pieces: list[bytes], start: int, end: int, texts: list[str], first: dict[str, Any]
) -> WireDelta:
    """The :class:`WireDelta` of the events ``pieces[start:end]``."""
    data = b"data: " + _SEPARATOR.join(pieces[start:end]) + b"\n\n"
    return WireDelta(data, texts, first.get("id"), first.get("model"))


def plain_text(chunk: Any) -> str | None:
    """The text of a chunk that is nothing but the next piece of text (one choice,
    index 0, a delta of ``content`` alone or with ``role: assistant``, no finish
    reason, logprobs, usage or error); ``None`` for any other chunk."""
    try:
        (choice,) = chunk["choices"]
        delta = choice["delta"]
        text = delta["content"]
    except (TypeError, KeyError, ValueError, IndexError):
        return None
    if (
        type(text) is not str
        or not text
        or (len(delta) != 1 and not (len(delta) == 2 and delta.get("role") == "assistant"))
        or choice.get("finish_reason") is not None
        or choice.get("logprobs") is not None
        or choice.get("index", 0) != 0
        or chunk.get("usage") is not None
        or "error" in chunk
    ):
        return None
    return text
