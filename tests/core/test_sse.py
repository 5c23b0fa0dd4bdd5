from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from polyroute import UpstreamProtocolError
from polyroute.core.deltas import TextDelta
from polyroute.core.sse import OpenAIChunkEncoder, SSEDecoder, SSEEvent, encode_event


def decode(*pieces: bytes, **kwargs: int) -> list[SSEEvent]:
    decoder = SSEDecoder(provider="test", **kwargs)
    events: list[SSEEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.close()


def test_data_with_and_without_a_space() -> None:
    assert [e.data for e in decode(b"data: a\n\ndata:b\n\ndata:  c\n\n")] == ["a", "b", " c"]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode(b"data: one\ndata: two\n\n") == [SSEEvent("one\ntwo")]


def test_event_id_and_retry_fields() -> None:
    events = decode(b"event: update\nid: 7\nretry: 1500\ndata: x\n\ndata: y\n\n")
    assert events == [SSEEvent("x", "update", "7", 1500), SSEEvent("y", "message", "7", None)]


def test_comments_and_unknown_fields_are_ignored() -> None:
    assert decode(b": ping\nfoo: bar\ndata: x\n\n:\n\n") == [SSEEvent("x")]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert decode(b"\n\n\nevent: lonely\n\n") == []


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_all_line_endings(end: bytes) -> None:
    body = b"data: a" + end + end + b"data: b" + end + end
    assert [e.data for e in decode(body)] == ["a", "b"]


def test_crlf_split_across_reads_is_one_line_end() -> None:
    assert [e.data for e in decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n")] == ["a\nb"]


def test_final_event_without_blank_line_is_delivered_at_eof() -> None:
    assert decode(b"data: first\n\ndata: last") == [SSEEvent("first"), SSEEvent("last")]


def test_utf8_character_split_across_reads() -> None:
    raw = "data: 🌍é\n\n".encode()
    pieces = [raw[i : i + 1] for i in range(len(raw))]
    assert decode(*pieces) == [SSEEvent("🌍é")]


def test_byte_order_mark_at_start_is_dropped() -> None:
    assert decode(b"\xef\xbb", b"\xbfdata: x\n\n") == [SSEEvent("x")]


def test_invalid_utf8_raises_protocol_error_naming_the_provider() -> None:
    with pytest.raises(UpstreamProtocolError, match="invalid UTF-8") as caught:
        decode(b"data: \xff\xfe\n\n")
    assert caught.value.provider == "test"


def test_line_longer_than_the_limit_is_rejected_without_buffering_it_all() -> None:
    decoder = SSEDecoder(max_line_bytes=1000)
    decoder.feed(b"data: " + b"x" * 600)
    with pytest.raises(UpstreamProtocolError, match="longer than 1000 bytes"):
        decoder.feed(b"x" * 600)


def test_line_longer_than_the_limit_in_one_read_is_rejected() -> None:
    with pytest.raises(UpstreamProtocolError, match="longer than"):
        decode(b"data: " + b"x" * 2000 + b"\n\n", max_line_bytes=1000)


# The same events whatever the chunking: the decoder's central promise.
_field_line = st.sampled_from(
    [
        b"data: hello",
        b"data:tight",
        b"data: \xc3\xa9t\xc3\xa9 \xf0\x9f\x8c\x8d",
        b": comment",
        b"event: custom",
        b"id: 42",
        b"retry: 10",
        b"",
        b"data",
        b"unknown: x",
    ]
)
_line_end = st.sampled_from([b"\n", b"\r\n", b"\r"])
_streams = st.lists(st.tuples(_field_line, _line_end), max_size=30).map(
    lambda lines: b"".join(line + end for line, end in lines)
)


@given(body=_streams, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_rechunking_gives_identical_events(body: bytes, cuts: list[int]) -> None:
    points = sorted({cut for cut in cuts if cut < len(body)})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert decode(*pieces) == decode(body)


@given(body=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=300))
def test_arbitrary_bytes_give_events_or_the_documented_error(body: bytes, cut: int) -> None:
    try:
        whole = decode(body)
    except UpstreamProtocolError:
        with pytest.raises(UpstreamProtocolError):
            decode(body[:cut], body[cut:])
        return
    assert decode(body[:cut], body[cut:]) == whole


def test_a_blank_line_resets_the_event_type_even_without_data() -> None:
    assert decode(b"event: x\n\ndata: y\n\n") == [SSEEvent("y")]


@pytest.mark.parametrize("model", ["gpt-4o", 'a "quoted" model', "m\ue000odel"])
@given(text=st.text())
def test_a_text_chunk_encodes_as_its_dict_does(model: str, text: str) -> None:
    # encode() joins cached bytes around the text; they must be the dict's bytes.
    encoder = OpenAIChunkEncoder(model, id="chatcmpl-1", created=1)
    expected = encode_event(encoder.chunk({"content": text}))
    assert encoder.encode(TextDelta(text)) == expected
    assert orjson.loads(expected[6:])["choices"][0]["delta"] == {"content": text}
