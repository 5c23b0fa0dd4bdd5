"""Relaying an OpenAI-format answer's text chunks as the upstream sent them.

When the consumer speaks the upstream's format (the gateway's chat completions to an
OpenAI-compatible entry), a chunk that is nothing but the next piece of text needs no
new encoding. :class:`PassThroughReader` hands runs of such chunks on as their bytes
(:class:`WireDelta`), and every other event (the role chunk, tool calls, reasoning,
the finish reason, usage, errors, ``[DONE]``) as a decoded :class:`SSEEvent` for the
provider's parser, as without it.

Each read's chunks are still decoded, in one ``orjson.loads`` call for all of them (for
chunks written alike, over their texts' strings alone: :class:`_ChunkShape`): a
malformed chunk must never reach the consumer (such a read goes to the SSE decoder and
the parser raises at the chunk, after delivering what came before it, as without
pass-through), the router counts the text delivered (a relay continues from it), and
telling plain text from the rest needs the contents. What is saved is all the work per
chunk after that: event objects, typed deltas, a new chunk's encoding.

A read is split only where it is ``data: {...}`` lines between blank lines, with LF
line ends: anything else in it (CR line ends, comments, ``event:`` or ``id:`` fields,
a ``data`` over several lines, JSON spread over lines) sends the read to the decoder.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any, ClassVar, Literal, TypeAlias, cast, get_args

from polyroute.core.deltas import WireDelta
from polyroute.core.errors import InvalidRequestError
from polyroute.core.jsoncodec import loads
from polyroute.core.sse import SSEDecoder, SSEEvent

WireFormat: TypeAlias = Literal["openai", "anthropic"]
"""The formats whose text chunks can be relayed as they came: OpenAI's chat chunks, and
Anthropic's Messages events (core/anthropic_wire.py)."""
WIRE_FORMATS: frozenset[WireFormat] = frozenset(get_args(WireFormat))


def relayable_formats(
    pass_through: WireFormat | Collection[WireFormat] | None,
) -> frozenset[WireFormat] | None:
    """``Router.stream``'s ``pass_through`` (a format, or several) as a set; raises
    :class:`InvalidRequestError` for one that is not in :data:`WIRE_FORMATS`."""
    if pass_through is None:
        return None
    formats = frozenset((pass_through,) if isinstance(pass_through, str) else pass_through)
    if unknown := formats - WIRE_FORMATS:
        raise InvalidRequestError(
            f"pass_through: unknown format {sorted(unknown)[0]!r}"
            f" (one of {', '.join(sorted(WIRE_FORMATS))})"
        )
    return formats or None


Relayed: TypeAlias = SSEEvent | WireDelta
"""What a read of a passed-through answer yields: runs of text chunks, and the rest."""

_SEPARATOR = b"\n\ndata: "
_DONE = b"[DONE]"
_DONE_EVENT = b"data: [DONE]\n\n"
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_MAX_MISSES = 2
"""Reads that may disprove a learned shape before a stream is decoded whole for good."""


class EventRunReader:
    """What every format's pass-through reader shares: fed raw bytes as they arrive (as
    :class:`SSEDecoder`, which it uses for everything it does not relay itself), it
    hands each run of whole events (up to the last blank line) to :meth:`_split`, and
    keeps the learned shape of a plain text chunk (:class:`_ChunkShape`)."""

    __slots__ = ("_decoder", "_misses", "_off", "_pending", "_pending_size", "_shape")
    text_key: ClassVar[bytes]
    """The JSON member whose string is a plain chunk's text (``b'"content":'``)."""

    def __init__(self, decoder: SSEDecoder) -> None:
        self._decoder = decoder
        self._shape: _ChunkShape | None = None
        """How this upstream writes a plain text chunk, once seen."""
        self._misses = 0
        """Reads whose plain chunks did not fit the shape learned before them."""
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
        rest decoded."""
        raise NotImplementedError

    def _texts(self, pieces: list[bytes]) -> tuple[list[str | None], tuple[Any, ...]] | None:
        """Each piece's text (``None`` for one that is not plain text) and what the
        plain ones name of themselves: by the shape learned, when they all fit it, else
        decoded (:meth:`_decoded_texts`); ``None`` when a piece is not JSON."""
        shape = self._shape
        if shape is not None and (texts := shape.texts(pieces)) is not None:
            return texts, shape.head
        return self._decoded_texts(pieces)

    def _decoded_texts(
        self, pieces: list[bytes]
    ) -> tuple[list[str | None], tuple[Any, ...]] | None:
        """:meth:`_texts` of every piece decoded, in one call; learns the shape."""
        raise NotImplementedError

    def _event(self, piece: bytes) -> SSEEvent | None:
        """``piece``, an event that is not plain text, as the SSE decoder would give it;
        ``None`` when it is not one this reader decodes alone."""
        raise NotImplementedError

    def _run(
        self, pieces: list[bytes], start: int, end: int, texts: list[str], head: tuple[Any, ...]
    ) -> WireDelta:
        """The :class:`WireDelta` of the plain events ``pieces[start:end]``."""
        raise NotImplementedError

    def _interleaved(
        self, pieces: list[bytes], texts: list[str | None], head: tuple[Any, ...]
    ) -> list[Relayed] | None:
        """The runs of consecutive texts between the other pieces, each of those decoded
        (:meth:`_event`); ``None`` when one cannot be (the read goes to the decoder)."""
        out: list[Relayed] = []
        start = 0
        run: list[str] = []
        for position, text in enumerate(texts):
            if text is not None:
                run.append(text)
                continue
            event = self._event(pieces[position])
            if event is None:
                return None
            if run:
                out.append(self._run(pieces, start, position, run, head))
                run = []
            out.append(event)
            start = position + 1
        if run:
            out.append(self._run(pieces, start, len(pieces), run, head))
        return out

    def _learn(self, piece: bytes, text: str, head: tuple[Any, ...]) -> None:
        """Learn the shape of ``piece``, a plain chunk of ``text`` naming ``head``, for
        the next reads, unless the stream has proved it has none twice: a read whose
        plain chunks did not fit the shape held, and that teaches another one."""
        held = self._shape
        learned = (
            None if self._misses >= _MAX_MISSES else _ChunkShape.learn(piece, text, self.text_key)
        )
        if held is not None and not (learned is not None and learned.fits(held)):
            self._misses += 1
            if self._misses >= _MAX_MISSES:
                learned = None
        self._shape = learned if learned is None else learned.naming(head)


class PassThroughReader(EventRunReader):
    """Splits an OpenAI-format event stream into :class:`WireDelta` runs of plain text
    chunks and decoded events."""

    __slots__ = ()
    text_key = b'"content":'

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
        read = self._texts(pieces)
        if read is None:
            return self._decoder.feed(events)  # it raises at the malformed event
        texts, head = read
        if None not in texts:  # every chunk is text: one run, the read's own bytes
            data = events[: -len(_DONE_EVENT)] if done else events
            whole = WireDelta(data, cast(list[str], texts), *head)
            return [whole, SSEEvent(_DONE.decode())] if done else [whole]
        out = self._interleaved(pieces, texts, head)
        if out is None:
            return self._decoder.feed(events)
        if done:
            out.append(SSEEvent(_DONE.decode()))
        return out

    @staticmethod
    def _event(piece: bytes) -> SSEEvent | None:
        try:
            return SSEEvent(piece.decode())
        except UnicodeDecodeError:  # not decoded by a shape: the decoder raises at it
            return None

    @staticmethod
    def _run(
        pieces: list[bytes], start: int, end: int, texts: list[str], head: tuple[Any, ...]
    ) -> WireDelta:
        data = b"data: " + _SEPARATOR.join(pieces[start:end]) + b"\n\n"
        return WireDelta(data, texts, *head)

    def _decoded_texts(
        self, pieces: list[bytes]
    ) -> tuple[list[str | None], tuple[Any, Any]] | None:
        """Each piece's text when it is a plain text chunk naming the id and model of
        the read's first one (else ``None``), and that id and model, all decoded in one
        call; ``None`` when a piece is not JSON. Learns the shape of that first plain
        chunk for the next reads (:class:`_ChunkShape`), unless the stream has proved
        it has none twice."""
        try:
            chunks = loads(b"[" + b",".join(pieces) + b"]")
        except ValueError:
            return None
        if len(chunks) != len(pieces):  # a piece held more than one value
            return None
        texts: list[str | None] = []
        head: tuple[Any, Any] | None = None
        first = -1
        for index, chunk in enumerate(chunks):
            text = plain_text(chunk)
            if text is not None:
                said = (chunk.get("id"), chunk.get("model"))
                if head is None:
                    head, first = said, index
                elif said != head:
                    text = None  # one run names one id and model: this one is decoded
            texts.append(text)
        if head is None:
            return texts, (None, None)
        text = texts[first]
        assert text is not None
        self._learn(pieces[first], text, head)
        return texts, head


class _ChunkShape:
    """The bytes of a plain text chunk around its text's JSON string, as this upstream
    writes them (``{"id":...,"delta":{"content":`` and ``},...}``): a chunk made of
    the same bytes around another non-empty JSON string is a plain text chunk too, with
    that text, so a read of such chunks needs only their strings decoded, not each
    chunk's objects. Upstreams that vary other bytes per chunk (OpenAI's
    ``obfuscation``, a per-chunk id or time) do not fit one shape: their reads are
    decoded whole (:meth:`PassThroughReader._decoded_texts`)."""

    __slots__ = ("after", "before", "head")

    def __init__(self, before: bytes, after: bytes) -> None:
        self.before = before
        self.after = after
        self.head: tuple[Any, ...] = (None, None)
        """What its chunks say of themselves, in ``before`` or ``after``: OpenAI's id and
        model, Anthropic's block index."""

    def naming(self, head: tuple[Any, ...]) -> _ChunkShape:
        self.head = head
        return self

    def fits(self, other: _ChunkShape) -> bool:
        """Whether ``other`` is this same shape (learned again from another read)."""
        return self.before == other.before and self.after == other.after

    @classmethod
    def learn(cls, piece: bytes, text: str, key: bytes) -> _ChunkShape | None:
        """The shape of ``piece``, a plain chunk whose text is ``text``, the string of
        the member ``key`` (its last); ``None`` when that string cannot be told apart
        (written in more than one place)."""
        found = piece.rfind(key)
        at = found + len(key) + (piece[found + len(key) : found + len(key) + 1] == b" ")
        string = _JSON_STRING.match(piece, at)
        if found < 0 or string is None or string.end() == len(piece) or loads(string[0]) != text:
            return None
        return cls(piece[:at], piece[string.end() :])

    def texts(self, pieces: list[bytes]) -> list[str | None] | None:
        """Each piece's text if it has this shape, else ``None`` (decoded as an event);
        ``None`` for the read when too few pieces have it, or a string is not JSON."""
        before, after = self.before, self.after
        start, end = len(before), -len(after)
        strings = [
            p[start:end] if p.startswith(before) and p.endswith(after) else None for p in pieces
        ]
        found = [string for string in strings if string is not None]
        if len(found) * 2 < len(pieces):
            return None  # not this upstream's shape after all: decoded whole
        try:
            decoded: list[str | None] = loads(b"[" + b",".join(found) + b"]")
        except ValueError:
            return None
        # Each a JSON string, none of them empty: a plain chunk's text.
        if len(decoded) != len(found) or set(map(type, decoded)) != {str} or "" in decoded:
            return None
        if len(found) == len(strings):  # the common read: every chunk of it is text
            return decoded
        texts = iter(decoded)
        return [None if string is None else next(texts) for string in strings]


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
