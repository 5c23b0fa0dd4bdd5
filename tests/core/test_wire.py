"""Pass-through (core/wire.py): an answer read with text chunks relayed as they came
gives the consumer the same deltas as one decoded chunk by chunk, wherever the reads
split it, and only ever relays bytes the upstream sent as whole, valid chunks."""

from __future__ import annotations

import json

import orjson
import pytest

from polyroute import PolyrouteError
from polyroute.core.deltas import Delta, TextDelta, WireDelta
from polyroute.core.sse import SSEDecoder
from polyroute.core.wire import PassThroughReader, plain_text
from polyroute.providers.openai import OpenAI
from tests.core.relaying import read_through


def chunk(
    delta: dict[str, object], finish: str | None = None, **extra: object
) -> dict[str, object]:
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


def events(*payloads: object, compact: bool = True, line_end: bytes = b"\n") -> bytes:
    def encoded(payload: object) -> bytes:
        if isinstance(payload, bytes):
            return payload
        return orjson.dumps(payload) if compact else json.dumps(payload).encode()

    return b"".join(b"data: " + encoded(p) + line_end + line_end for p in payloads)


ROLE = chunk({"role": "assistant", "content": ""})
TEXTS = ["Hel", "lo, ", "wörld ", "\u00e9\U0001f600", 'a "quoted" \\ bit', "\n"]
FINISH = chunk({}, "stop")
USAGE = {**chunk({}), "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
DONE = b"[DONE]"


def shaped(string: bytes) -> bytes:
    """A chunk written as the others are, around ``string`` (a JSON string, or not)."""
    return orjson.dumps(chunk({"content": "PLACEHOLDER"})).replace(b'"PLACEHOLDER"', string)


ANSWERS = {
    "compact, as OpenAI writes": events(
        ROLE, *[chunk({"content": t}) for t in TEXTS], FINISH, USAGE, DONE
    ),
    "spaced, as Python's json writes": events(
        ROLE, *[chunk({"content": t}) for t in TEXTS], FINISH, DONE, compact=False
    ),
    "per-chunk fields (obfuscation, usage null)": events(
        *[chunk({"content": t}, obfuscation=f"x{i}", usage=None) for i, t in enumerate(TEXTS)],
        FINISH,
        DONE,
    ),
    "role in every chunk": events(
        *[chunk({"role": "assistant", "content": t}) for t in TEXTS], FINISH, DONE
    ),
    "tool calls and reasoning between texts": events(
        chunk({"content": "Let me look."}),
        chunk({"reasoning_content": "thinking"}),
        chunk({"content": " Still here."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    }
                ]
            }
        ),
        chunk({"content": "after"}),
        chunk({}, "tool_calls"),
        DONE,
    ),
    "escaped unicode": events(
        chunk({"content": "caf"}),
        b'{"id":"x","choices":[{"index":0,"delta":{"content":"\\u00e9"},"finish_reason":null}]}',
        FINISH,
        DONE,
    ),
    "keep-alive comments": events(chunk({"content": "a"}), chunk({"content": "b"}))
    + b": ping\n\n"
    + events(chunk({"content": "c"}), FINISH, DONE),
    "CRLF line ends": events(
        *[chunk({"content": t}) for t in TEXTS], FINISH, DONE, line_end=b"\r\n"
    ),
    "named events": b"event: message\n" + events(chunk({"content": "a"}), FINISH, DONE),
    "two choices": events(
        {
            **chunk({"content": "a"}),
            "choices": [
                {"index": 0, "delta": {"content": "a"}, "finish_reason": None},
                {"index": 1, "delta": {"content": "b"}, "finish_reason": None},
            ],
        },
        chunk({"content": "c"}),
        FINISH,
        DONE,
    ),
    "a second choice's chunk": events(
        chunk({"content": "a"}),
        {
            **chunk({"content": "b"}),
            "choices": [{"index": 1, "delta": {"content": "b"}, "finish_reason": None}],
        },
        FINISH,
        DONE,
    ),
    "logprobs": events(
        {
            **chunk({"content": "a"}),
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "a"},
                    "logprobs": {"content": []},
                    "finish_reason": None,
                }
            ],
        },
        FINISH,
        DONE,
    ),
    "a bad string in a chunk shaped as the others": events(
        chunk({"content": "one "}), chunk({"content": "two "}), shaped(b'"bad \\q"'), FINISH, DONE
    ),
    "an empty string in a chunk shaped as the others": events(
        chunk({"content": "one "}),
        chunk({"content": "two "}),
        shaped(b'""'),
        chunk({"content": "three"}),
        FINISH,
        DONE,
    ),
    "malformed chunk after text": events(
        chunk({"content": "ok "}), chunk({"content": "fine"}), b'{"choices": [', FINISH, DONE
    ),
    "JSON over two lines": events(chunk({"content": "ok"}))
    + b'data: {"choices":\n[]}\n\n'
    + events(DONE),
    "error payload after text": events(
        chunk({"content": "partial"}), {"error": {"message": "overloaded", "type": "server_error"}}
    ),
    "a chunk that is not an object": events(chunk({"content": "a"}), [1, 2], FINISH, DONE),
    "invalid UTF-8 in a chunk among texts": events(
        *[chunk({"content": t}) for t in TEXTS], b'{"choices": "\xff"}', FINISH, DONE
    ),
    "content null": events(
        chunk({"content": "a"}), chunk({"content": None}), chunk({"content": "b"}), FINISH, DONE
    ),
}


def read(
    answer: bytes, cuts: list[int], *, relay: bool
) -> tuple[list[Delta], list[bytes], str | None]:
    """The deltas (relayed runs as their texts), the relayed bytes and the error's
    message, reading ``answer`` in pieces cut at ``cuts``."""
    deltas, relayed, error = read_through(
        answer, cuts, OpenAI(), PassThroughReader if relay else None
    )
    return deltas, [run.data for run in relayed], error


@pytest.mark.parametrize("name", list(ANSWERS))
def test_relayed_and_decoded_give_the_same_deltas_at_every_cut(name: str) -> None:
    answer = ANSWERS[name]
    expected = read(answer, [], relay=False)
    relayed_any = False
    for cut in range(len(answer) + 1):
        cuts = [cut]
        deltas, relayed, error = read(answer, cuts, relay=True)
        assert (deltas, error) == expected[::2], (name, cut)
        for data in relayed:
            assert data in answer, "relayed bytes are the upstream's own, whole events"
            assert data.startswith(b"data: ")
            assert data.endswith(b"\n\n")
        relayed_any = relayed_any or bool(relayed)
    # Also in pieces of three bytes: a character split over reads, events over many.
    deltas, _, error = read(answer, list(range(3, len(answer), 3)), relay=True)
    assert (deltas, error) == expected[::2]
    if name.startswith(("compact", "spaced", "per-chunk", "role", "tool", "escaped", "an empty")):
        assert relayed_any
    if name in ("CRLF line ends", "named events"):
        assert not relayed_any  # framed otherwise: every byte goes to the decoder


def test_a_malformed_chunk_is_never_relayed() -> None:
    answer = ANSWERS["malformed chunk after text"]
    deltas, relayed, error = read(answer, [], relay=True)
    assert relayed == []  # the read holding it went to the decoder, whole
    assert [d.text for d in deltas if isinstance(d, TextDelta)] == ["ok ", "fine"]
    assert error is not None
    assert "malformed chunk" in error


def test_a_read_is_relayed_as_one_run_between_what_is_decoded() -> None:
    answer = ANSWERS["compact, as OpenAI writes"]
    reader = PassThroughReader(SSEDecoder())
    items = list(reader.feed(answer))
    kinds = [type(item).__name__ for item in items]
    assert kinds == ["SSEEvent", "WireDelta", "SSEEvent", "SSEEvent", "SSEEvent"]
    run = items[1]
    assert isinstance(run, WireDelta)
    assert run.texts == TEXTS
    assert (run.id, run.model) == ("chatcmpl-up", "m")


def test_a_line_longer_than_the_limit_is_refused_as_without_pass_through() -> None:
    reader = PassThroughReader(SSEDecoder(max_line_bytes=100))
    assert reader.feed(b"data: " + b"x" * 40) == []
    assert reader.feed(b"x" * 50) == []  # 96 bytes kept
    with pytest.raises(PolyrouteError, match="longer than 100 bytes"):
        reader.feed(b"x" * 10)


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (chunk({"content": "a"}), "a"),
        (chunk({"role": "assistant", "content": "a"}), "a"),
        (chunk({"content": ""}), None),
        (chunk({"content": "a"}, "stop"), None),
        (chunk({"content": "a", "refusal": None}), None),
        (chunk({"role": "tool", "content": "a"}), None),
        ({**chunk({"content": "a"}), "usage": {"prompt_tokens": 1}}, None),
        ({**chunk({"content": "a"}), "error": None}, None),
        ({"choices": {"delta": 1}}, None),
        ([], None),
    ],
)
def test_which_chunks_are_plain_text(payload: object, text: str | None) -> None:
    assert plain_text(payload) == text
