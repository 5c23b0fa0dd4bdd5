"""Relaying an Anthropic-format answer's text deltas as the upstream sent them.

core/wire.py's twin for Anthropic's Messages events: when the consumer writes them (the
gateway's ``/v1/messages``) and the upstream speaks them (an Anthropic entry), an event
that is nothing but the next piece of a text block (``event: content_block_delta``, a
``text_delta``) needs no new encoding. :class:`AnthropicPassThroughReader` hands runs of
such events on as their bytes (:class:`WireDelta`, naming the block's ``index``, which
the consumer may number otherwise), and every other event (``message_start``, block
starts and stops, thinking and signatures, tool-call arguments, ``message_delta`` with
the stop reason and usage, ``message_stop``, ``ping``, errors) as a decoded
:class:`SSEEvent` for the provider's parser, as without it.

The guarantees are core/wire.py's, kept the same way: each read's events are decoded in
one ``orjson`` call (over the texts' strings alone once this upstream's text delta has
a known shape), and a read holding a malformed event goes to the SSE decoder, where the
parser raises at that event after what came before it. A read is split only where it is
``event: NAME`` and ``data: {...}`` line pairs between blank lines, with LF line ends:
anything else in it (CR line ends, comments, ``id:`` fields, a ``data`` over several
lines, an event without a name) sends the read to the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from polyroute.core.deltas import WireDelta
from polyroute.core.jsoncodec import loads
from polyroute.core.sse import SSEEvent
from polyroute.core.wire import EventRunReader, Relayed

_EVENT = b"event: "
_DATA = b"\ndata: "
_TEXT_EVENT = b"event: content_block_delta\n"
_BLANK = b"\n\n"


class AnthropicPassThroughReader(EventRunReader):
    """Splits an Anthropic-format event stream into :class:`WireDelta` runs of plain
    text deltas of one block and decoded events."""

    __slots__ = ()
    text_key = b'"text":'

    def _split(self, events: bytes) -> Sequence[Relayed]:
        """Whole events (``events`` ends with a blank line): text deltas relayed, the
        rest decoded; all of it decoded unless every event is a name and a data line."""
        if events[:7] != _EVENT or _TEXT_EVENT not in events:  # no text to relay in it
            return self._decoder.feed(events)
        pieces = events[:-2].split(_BLANK)
        # Two lines an event: an event with more lines than that makes another have
        # fewer, without a data line, which no check below lets through.
        if events.count(b"\n") != 3 * len(pieces):
            return self._decoder.feed(events)
        read = self._texts(pieces)
        if read is None:
            return self._decoder.feed(events)  # it raises at the malformed event
        texts, head = read
        if None not in texts:  # every event is text: one run, the read's own bytes
            return [WireDelta(events, cast(list[str], texts), index=head[0])]
        out = self._interleaved(pieces, texts, head)
        return self._decoder.feed(events) if out is None else out  # None: framed otherwise

    @staticmethod
    def _event(piece: bytes) -> SSEEvent | None:
        """``piece`` (``event: NAME``, ``data: JSON``) as the SSE decoder would give it;
        ``None`` when it is framed otherwise (one line, or more than two) or not UTF-8."""
        name, found, data = piece.partition(_DATA)
        if not found or name[:7] != _EVENT or b"\n" in name or b"\n" in data:
            return None
        try:
            return SSEEvent(data.decode(), name[7:].decode() or "message")
        except UnicodeDecodeError:
            return None

    @staticmethod
    def _run(
        pieces: list[bytes], start: int, end: int, texts: list[str], head: tuple[Any, ...]
    ) -> WireDelta:
        return WireDelta(_BLANK.join(pieces[start:end]) + _BLANK, texts, index=head[0])

    def _decoded_texts(
        self, pieces: list[bytes]
    ) -> tuple[list[str | None], tuple[Any, ...]] | None:
        """Each piece's text when it is a plain text delta of the block of the read's
        first one (else ``None``), and that block's index, all decoded in one call;
        ``None`` when a piece's data is not JSON. Learns the shape of that first text
        delta for the next reads (:meth:`EventRunReader._learn`)."""
        try:
            chunks = loads(b"[" + b",".join(piece.partition(_DATA)[2] for piece in pieces) + b"]")
        except ValueError:
            return None
        if len(chunks) != len(pieces):  # a piece held more than one value
            return None
        texts: list[str | None] = []
        index: Any = None
        first = -1
        for position, chunk in enumerate(chunks):
            text = plain_text_delta(chunk) if pieces[position].startswith(_TEXT_EVENT) else None
            if text is not None:
                if first < 0:
                    index, first = chunk["index"], position
                elif chunk["index"] != index:
                    text = None  # one run is one block's: this one is decoded
            texts.append(text)
        if first >= 0:
            text = texts[first]
            assert text is not None
            self._learn(pieces[first], text, (index,))
        return texts, (index,)


def plain_text_delta(chunk: Any) -> str | None:
    """The text of an event that is nothing but the next piece of a text block:
    ``{"type": "content_block_delta", "index": N, "delta": {"type": "text_delta",
    "text": "..."}}`` with a non-empty text and no other member; ``None`` for any other."""
    try:
        if len(chunk) != 3 or chunk["type"] != "content_block_delta":
            return None
        index, delta = chunk["index"], chunk["delta"]
        if len(delta) != 2 or delta["type"] != "text_delta":
            return None
        text = delta["text"]
    except (TypeError, KeyError):
        return None
    if type(index) is not int or type(text) is not str or not text:
        return None
    return text
