"""Pass-through of Anthropic's Messages events (core/anthropic_wire.py): an answer read
with its text deltas relayed as they came gives the consumer the same deltas and errors
as one decoded event by event, wherever the reads split it, and only ever relays bytes
the upstream sent as whole, valid text deltas of one block."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyroute import PolyrouteError
from polyroute.core.anthropic_wire import AnthropicPassThroughReader, plain_text_delta
from polyroute.core.deltas import Delta, TextDelta, WireDelta
from polyroute.core.sse import SSEDecoder, SSEEvent
from polyroute.providers.anthropic import Anthropic
from tests.core.relaying import read_through
from tests.upstreams.anthropic import (
    block_delta,
    block_start,
    block_stop,
    message_end,
    message_start,
)

Payload = dict[str, object] | bytes


def events(*payloads: Payload, compact: bool = True, line_end: bytes = b"\n") -> bytes:
    """Each payload as the API frames it: ``event: <its type>``, its data, a blank line
    (bytes are taken as a whole event's data, named ``content_block_delta``)."""

    def framed(payload: Payload) -> bytes:
        if isinstance(payload, bytes):
            name, data = b"content_block_delta", payload
        else:
            name = str(payload["type"]).encode()
            data = orjson.dumps(payload) if compact else json.dumps(payload).encode()
        return b"event: " + name + line_end + b"data: " + data + line_end + line_end

    return b"".join(map(framed, payloads))


TEXTS = ["Hel", "lo, ", "wörld ", "\u00e9\U0001f600", 'a "quoted" \\ bit', "\n", "text"]
TEXT_BLOCK = [block_start(0), *[block_delta(0, t) for t in TEXTS], block_stop(0)]


def shaped(string: bytes) -> bytes:
    """A text delta written as the others are, around ``string`` (JSON or not)."""
    return orjson.dumps(block_delta(0, "PLACEHOLDER")).replace(b'"PLACEHOLDER"', string)


def answer(*middle: Payload, **framing: object) -> bytes:
    return events(*message_start(), *middle, *message_end(), **framing)  # type: ignore[arg-type]


ANSWERS = {
    "compact, as the API writes": answer(*TEXT_BLOCK),
    "spaced, as Python's json writes": answer(*TEXT_BLOCK, compact=False),
    "thinking, then text": answer(
        block_start(0, "thinking"),
        block_delta(0, "Let me think.", "thinking_delta", "thinking"),
        block_delta(0, "sig", "signature_delta", "signature"),
        block_stop(0),
        block_start(1),
        *[block_delta(1, t) for t in TEXTS],
        block_stop(1),
    ),
    "tool use between texts": answer(
        block_start(0),
        block_delta(0, "Let me look."),
        block_delta(0, " Still here."),
        block_stop(0),
        block_start(1, "tool_use", id="toolu_1", name="f", input={}),
        block_delta(1, '{"city": ', "input_json_delta", "partial_json"),
        block_delta(1, '"Paris"}', "input_json_delta", "partial_json"),
        block_stop(1),
        block_start(2),
        block_delta(2, "after"),
        block_delta(2, " the call"),
        block_stop(2),
    ),
    "two text blocks in a row": answer(
        block_start(0),
        block_delta(0, "one "),
        block_delta(0, "two "),
        block_stop(0),
        block_start(1),
        block_delta(1, "three"),
        block_stop(1),
    ),
    "a citation between texts": answer(
        block_start(0),
        block_delta(0, "cited "),
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "citations_delta", "citation": {"type": "char_location"}},
        },
        block_delta(0, "text"),
        block_stop(0),
    ),
    "a text block that starts with text": answer(
        block_start(0, text="Hi "), block_delta(0, "there"), block_delta(0, "!"), block_stop(0)
    ),
    "escaped unicode": answer(
        block_start(0),
        block_delta(0, "caf"),
        b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\\u00e9"}}',
        block_stop(0),
    ),
    "keep-alive comments": events(
        *message_start(), block_start(0), block_delta(0, "a"), block_delta(0, "b")
    )
    + b": keep-alive\n\n"
    + events(block_delta(0, "c"), block_stop(0), *message_end()),
    "CRLF line ends": answer(*TEXT_BLOCK, line_end=b"\r\n"),
    "id fields": answer(*TEXT_BLOCK).replace(b"event: ", b"id: 7\nevent: "),
    "the name after the data": answer(*TEXT_BLOCK)
    .replace(b"event: content_block_delta\n", b"")
    .replace(b"\n\n", b"\nevent: content_block_delta\n\n"),
    "events without a name": answer(*TEXT_BLOCK).replace(b"event: content_block_delta\n", b""),
    "text deltas named otherwise": answer(*TEXT_BLOCK).replace(
        b"event: content_block_delta\n", b"event: message\n"
    ),
    "a text delta with a member more": answer(
        block_start(0),
        block_delta(0, "a"),
        {**block_delta(0, "b"), "delta": {"type": "text_delta", "text": "b", "extra": 1}},
        block_delta(0, "c"),
        block_stop(0),
    ),
    "an index that is not a number": answer(
        block_start(0),
        block_delta(0, "a"),
        {**block_delta(0, "b"), "index": "0"},
        block_delta(0, "c"),
        block_stop(0),
    ),
    "a bad string in a delta shaped as the others": answer(
        block_start(0),
        block_delta(0, "one "),
        block_delta(0, "two "),
        shaped(b'"bad \\q"'),
        block_stop(0),
    ),
    "an empty string in a delta shaped as the others": answer(
        block_start(0),
        block_delta(0, "one "),
        block_delta(0, "two "),
        shaped(b'""'),
        block_delta(0, "three"),
        block_stop(0),
    ),
    "malformed event after text": answer(
        block_start(0),
        block_delta(0, "ok "),
        block_delta(0, "fine"),
        b'{"type": "content_block_delta", "ind',
    ),
    "JSON over two lines": events(*message_start(), block_start(0), block_delta(0, "ok"))
    + b'event: content_block_delta\ndata: {"type":"content_block_delta",\n"index":0}\n\n'
    + events(block_stop(0), *message_end()),
    "a text delta's JSON over two lines": events(
        *message_start(), block_start(0), block_delta(0, "ok")
    )
    + b'event: content_block_delta\ndata: {"type":"content_block_delta",\n"index":0,'
    + b'"delta":{"type":"text_delta","text":"lost"}}\n\n'
    + events(block_stop(0), *message_end()),
    "error event after text": events(
        *message_start(),
        block_start(0),
        block_delta(0, "partial"),
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ),
    "an event that is not an object": answer(
        block_start(0), block_delta(0, "a"), b"[1, 2]", block_stop(0)
    ),
    "text null": answer(
        block_start(0), block_delta(0, "a"), {**block_delta(0, "b"), "delta": None}, block_stop(0)
    ),
    "invalid UTF-8 in an event's name": answer(*TEXT_BLOCK).replace(
        b"event: content_block_stop", b"event: content_block_\xff"
    ),
    "no end": events(*message_start(), *TEXT_BLOCK),
}


def read(
    answer: bytes, cuts: list[int], *, relay: bool
) -> tuple[list[Delta], list[WireDelta], str | None]:
    """The deltas (relayed runs as their texts), the relayed runs and the error's
    message, reading ``answer`` in pieces cut at ``cuts``."""
    return read_through(answer, cuts, Anthropic(), AnthropicPassThroughReader if relay else None)


def check_relayed(answer: bytes, relayed: list[WireDelta]) -> None:
    """Relayed runs are the upstream's own bytes: whole text delta events of the block
    they name, saying the texts they carry."""
    for run in relayed:
        assert run.data in answer
        events = run.data.split(b"\n\n")
        assert events.pop() == b""
        assert len(events) == len(run.texts)
        for event, text in zip(events, run.texts, strict=True):
            name, data = event.split(b"\n")
            assert name == b"event: content_block_delta"
            assert json.loads(data.removeprefix(b"data: ")) == block_delta(run.index or 0, text)
        assert type(run.index) is int


@pytest.mark.parametrize("name", list(ANSWERS))
def test_relayed_and_decoded_give_the_same_deltas_at_every_cut(name: str) -> None:
    answer = ANSWERS[name]
    expected = read(answer, [], relay=False)
    relayed_any = False
    for cut in range(len(answer) + 1):
        deltas, relayed, error = read(answer, [cut], relay=True)
        assert (deltas, error) == expected[::2], (name, cut)
        check_relayed(answer, relayed)
        relayed_any = relayed_any or bool(relayed)
    # Also in pieces of three bytes: a character split over reads, events over many.
    deltas, relayed, error = read(answer, list(range(3, len(answer), 3)), relay=True)
    assert (deltas, error) == expected[::2]
    check_relayed(answer, relayed)
    framed_otherwise = (
        "CRLF",
        "id fields",
        "the name after",
        "events without",
        "text deltas named",
    )
    if name.startswith(framed_otherwise):
        assert not relayed_any  # every text delta goes to the decoder
    elif "UTF-8" not in name:
        assert relayed_any


def test_the_answers_cover_what_they_say() -> None:
    """The cases above are not vacuous: the decoded path reads text from every one of
    them, and each malformed one ends in the error it is named for."""
    for name, answer in ANSWERS.items():
        deltas, _, error = read(answer, [], relay=False)
        assert any(isinstance(d, TextDelta) for d in deltas) or "UTF-8" in name, name
        if name.startswith(
            ("malformed", "JSON", "a text delta's JSON", "an event that", "text null", "a bad")
        ):
            assert error is not None
            assert "malformed event" in error, name
    assert "overloaded_error" in str(read(ANSWERS["error event after text"], [], relay=False)[2])
    assert "invalid UTF-8" in str(
        read(ANSWERS["invalid UTF-8 in an event's name"], [], relay=False)[2]
    )


def test_a_malformed_event_is_never_relayed() -> None:
    answer = ANSWERS["malformed event after text"]
    deltas, relayed, error = read(answer, [], relay=True)
    assert relayed == []  # the read holding it went to the decoder, whole
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == ["ok ", "fine"]
    assert error is not None
    assert "malformed event" in error


def test_a_read_is_relayed_as_one_run_per_block_between_what_is_decoded() -> None:
    answer = ANSWERS["tool use between texts"]
    items = list(AnthropicPassThroughReader(SSEDecoder()).feed(answer))
    kinds = [
        f"run of {item.index}" if isinstance(item, WireDelta) else item.event for item in items
    ]
    assert kinds == [
        "message_start",
        "ping",
        "content_block_start",
        "run of 0",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",  # the read's runs are its first block's: decoded
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    run = items[3]
    assert isinstance(run, WireDelta)
    assert run.texts == ["Let me look.", " Still here."]


def test_later_reads_of_one_block_are_relayed_by_its_shape() -> None:
    reader = AnthropicPassThroughReader(SSEDecoder())
    first = reader.feed(
        events(*message_start(), block_start(0), block_delta(0, "a"), block_delta(0, "b"))
    )
    assert [type(item).__name__ for item in first] == ["SSEEvent"] * 3 + ["WireDelta"]
    later = events(*[block_delta(0, t) for t in TEXTS])
    (run,) = reader.feed(later)
    assert isinstance(run, WireDelta)
    assert (run.data, run.texts, run.index) == (later, TEXTS, 0)
    # A delta shaped as the others around a string that is not one is no text delta:
    # its read goes to the decoder, and the parser raises at it.
    first, bad = reader.feed(events(block_delta(0, "c"), shaped(b'"bad \\q"')))
    assert isinstance(first, SSEEvent)
    assert isinstance(bad, SSEEvent)
    parse = Anthropic().stream_parser()
    out: list[Delta] = []
    parse(first, out)
    assert out == [TextDelta("c")]
    with pytest.raises(PolyrouteError, match="malformed event"):
        parse(bad, out)


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
    compact=st.booleans(),
)
def test_any_texts_cut_anywhere_read_the_same_relayed(
    texts: list[str], cuts: list[int], compact: bool
) -> None:
    answer = events(
        *message_start(),
        block_start(0),
        *[block_delta(0, t) for t in texts],
        block_stop(0),
        *message_end(),
        compact=compact,
    )
    cuts = sorted({cut for cut in cuts if cut <= len(answer)})
    expected = read(answer, [], relay=False)
    deltas, relayed, error = read(answer, cuts, relay=True)
    assert (deltas, error) == expected[::2]
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == "".join(texts)
    check_relayed(answer, relayed)


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (block_delta(0, "a"), "a"),
        (block_delta(3, "a"), "a"),
        (block_delta(0, ""), None),
        (block_delta(0, "a", "thinking_delta", "thinking"), None),
        (block_delta(0, '{"a"', "input_json_delta", "partial_json"), None),
        ({**block_delta(0, "a"), "index": "0"}, None),
        ({**block_delta(0, "a"), "index": True}, None),
        ({**block_delta(0, "a"), "extra": None}, None),
        (
            {**block_delta(0, "a"), "delta": {"type": "text_delta", "text": "a", "citations": []}},
            None,
        ),
        ({**block_delta(0, "a"), "delta": {"type": "text_delta", "text": 1}}, None),
        ({**block_delta(0, "a"), "type": "content_block_start"}, None),
        (block_stop(0), None),
        ({"type": "content_block_delta", "index": 0, "delta": "ab"}, None),
        ([], None),
        ("abc", None),
    ],
)
def test_which_events_are_plain_text(payload: object, text: str | None) -> None:
    assert plain_text_delta(payload) == text
