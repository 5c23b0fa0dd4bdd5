"""Anthropic's Messages API to an Anthropic-format entry: the gateway relays the
upstream's text deltas as their bytes (core/anthropic_wire.py), rewriting only the
content block index where its answer numbers the blocks otherwise, and keeps every
guarantee of the decoded path: the official SDK reads the same message, no malformed
event reaches the client, a cut answer continues from exactly what was delivered.

The decoded path to compare with is the same gateway's, for the model ``atomic``
(``tool_calls: atomic``, under which nothing is relayed): on answers without tool
calls it writes what the decoded path writes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import pytest
import pytest_asyncio
import yaml

from tests.server.helpers import gateway
from tests.upstreams.anthropic import (
    AnthropicUpstream,
    anthropic_events,
    block_delta,
    block_start,
    block_stop,
    message_end,
    message_start,
)
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")
HI = [{"role": "user", "content": "Hi"}]
TEXTS = ["Relayed", " as", " it", " came: ", "\u00e9\U0001f600", ' "quoted"', "\n"]


@dataclass
class Served:
    url: str
    upstream: AnthropicUpstream
    backup: AnthropicUpstream

    def client(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.url, api_key="unused", max_retries=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    upstream = await AnthropicUpstream(models=["m", "atomic"]).start()
    backup = await AnthropicUpstream(models=["m", "atomic"]).start()
    config = tmp_path_factory.mktemp("messages-pass-through") / "gateway.yaml"
    models = ["m", "atomic"]
    entries = [
        {"name": "up", "type": "anthropic", "base_url": upstream.base_url, "models": models},
        {"name": "backup", "type": "anthropic", "base_url": backup.base_url, "models": models},
    ]
    settings = {
        "retry": {"attempts": 1},
        "cooldown": {"failures": 1000},
        "per_model": {"atomic": {"tool_calls": "atomic"}},
    }
    config.write_text(yaml.safe_dump({"providers": entries, **settings}))
    try:
        async with gateway(config) as process:
            yield Served(process.url, upstream, backup)
    finally:
        await upstream.stop()
        await backup.stop()
    assert process.code == 0


@pytest.fixture(autouse=True)
def fresh_scripts(served: Served) -> None:
    for server in (served.upstream, served.backup):
        server.reset()


def text_block(index: int, texts: list[str] = TEXTS) -> list[dict[str, Any]]:
    return [block_start(index), *[block_delta(index, text) for text in texts], block_stop(index)]


def script(*middle: dict[str, Any] | bytes, compact: bool = False, **options: Any) -> Script:
    """An answer of these events between the start and the end, each event one write
    (as a live upstream sends them, each read one event or a few). Spaced JSON unless
    ``compact``: bytes the gateway's own encoder does not write, so that finding them
    in its answer shows they were relayed (``spaced()``)."""
    events = [*message_start(), *middle, *message_end()]
    if options.pop("cut", False):
        events = [*message_start(), *middle]  # no end: the connection drops after the last
    chunks = [anthropic_events(event, compact=compact) for event in events]
    return Script(raw=b"".join(chunks), piece_size=options.pop("piece_size", None), **options)


async def post(served: Served, model: str = "m") -> tuple[bytes, str, list[tuple[str, Any]]]:
    """The gateway's streamed answer: its bytes, its request id and its events."""
    body = {"model": model, "max_tokens": 100, "messages": HI, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{served.url}/v1/messages", json=body) as response,
    ):
        assert response.status == 200
        raw = await response.read()
        request_id = response.headers["x-request-id"]
    events = []
    for event in raw.decode().strip().split("\n\n"):
        name, data = event.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return raw, request_id, events


def spaced(event: dict[str, Any]) -> bytes:
    """``event`` as :func:`script` writes it by default."""
    return anthropic_events(event, compact=False)


def text_of(events: list[tuple[str, Any]]) -> str:
    return "".join(
        data["delta"]["text"]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "text_delta"
    )


def comparable(events: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``events`` without what differs between two requests: the message id, the model
    asked (``m`` or ``atomic``) and the gateway's facts."""
    out = []
    for name, data in events:
        data = json.loads(json.dumps(data))
        if name == "message_start":
            data["message"]["id"] = data["message"]["model"] = "-"
        data.pop("polyroute", None)
        out.append((name, data))
    return out


async def test_text_deltas_reach_the_client_as_the_upstream_sent_them(served: Served) -> None:
    served.upstream.then(script(*text_block(0)))
    raw, request_id, events = await post(served)
    for text in TEXTS:  # byte for byte, as the upstream wrote each one
        assert spaced(block_delta(0, text)) in raw
    message = events[0][1]["message"]
    assert (message["id"], message["model"]) == (f"msg_{request_id}", "m")  # ours, not theirs
    assert b"msg_upstream" not in raw
    assert text_of(events) == "".join(TEXTS)
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["polyroute"]["provider"] == "up"


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "spaced"])
async def test_relayed_and_decoded_answers_are_the_same_events(
    served: Served, compact: bool
) -> None:
    served.upstream.default = script(*text_block(0), compact=compact)
    raw, _, relayed = await post(served, "m")
    _, _, decoded = await post(served, "atomic")
    if not compact:  # compact, the gateway's own events are the same bytes
        assert spaced(block_delta(0, TEXTS[0])) in raw  # relayed indeed
    assert comparable(relayed) == comparable(decoded)


async def test_blocks_the_answer_numbers_otherwise_say_its_index(served: Served) -> None:
    # Upstream: thinking (0), an empty text block (1), two text blocks in a row (2, 3).
    # The gateway's answer: thinking (0) and one text block (1), as the decoded path says.
    middle = [
        block_start(0, "thinking"),
        block_delta(0, "Hmm.", "thinking_delta", "thinking"),
        block_delta(0, "sig", "signature_delta", "signature"),
        block_stop(0),
        block_start(1),
        block_stop(1),
        *text_block(2, ["one ", "two "]),
        *text_block(3, ["three ", "four"]),
    ]
    served.upstream.default = script(*middle)
    raw, _, relayed = await post(served, "m")
    _, _, decoded = await post(served, "atomic")
    assert comparable(relayed) == comparable(decoded)
    assert spaced(block_delta(2, "one ")) not in raw  # its index rewritten
    assert spaced(block_delta(1, "one ")) in raw
    texts = [data for name, data in relayed if name == "content_block_delta"]
    assert {data["index"] for data in texts if data["delta"]["type"] == "text_delta"} == {1}
    async with served.client() as client:
        for model in ("m", "atomic"):
            async with client.messages.stream(model=model, max_tokens=100, messages=HI) as stream:
                message = await stream.get_final_message()
            assert [b.type for b in message.content] == ["thinking", "text"]
            assert message.content[1].text == "one two three four"  # type: ignore[union-attr]


async def test_the_official_client_reads_a_relayed_answer(served: Served) -> None:
    served.upstream.then(script(*text_block(0), piece_size=7))  # reads cut anywhere
    async with (
        served.client() as client,
        client.messages.stream(model="m", max_tokens=100, messages=HI) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
    assert "".join(texts) == "".join(TEXTS)
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "".join(TEXTS)  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 9


async def test_tool_calls_are_decoded_around_relayed_text(served: Served) -> None:
    middle = [
        *text_block(0, ["Let me ", "look."]),
        block_start(1, "tool_use", id="toolu_1", name="get_weather", input={}),
        block_delta(1, '{"city": ', "input_json_delta", "partial_json"),
        block_delta(1, '"Paris"}', "input_json_delta", "partial_json"),
        block_stop(1),
    ]
    served.upstream.default = script(*middle)
    raw, _, events = await post(served)
    assert spaced(block_delta(0, "Let me ")) in raw
    async with (
        served.client() as client,
        client.messages.stream(model="m", max_tokens=100, messages=HI) as stream,
    ):
        message = await stream.get_final_message()
    assert text_of(events) == "Let me look."
    calls = [data for name, data in events if name == "content_block_start"]
    assert calls[1]["content_block"]["name"] == "get_weather"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]


async def test_a_malformed_event_never_reaches_the_client(served: Served) -> None:
    broken = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lost'
    middle = [block_start(0), block_delta(0, "Before "), block_delta(0, "the break"), broken]
    served.upstream.then(script(*middle, cut=True))
    served.backup.then(Script(chunks=[", after it."]))
    raw, _, events = await post(served)
    assert b"lost" not in raw
    assert text_of(events) == "Before the break, after it."
    facts = events[-2][1]["polyroute"]
    assert (facts["provider"], facts["attempts"]) == ("backup", 2)


async def test_a_cut_answer_continues_from_exactly_the_text_delivered(served: Served) -> None:
    texts = TEXTS[:-1]  # no whitespace at the end, which a prefill leaves out
    served.upstream.then(
        script(block_start(0), *[block_delta(0, t) for t in texts], cut=True, reset_after=0)
    )
    served.backup.then(Script(chunks=[" And the rest."]))
    _, _, events = await post(served)
    assert text_of(events) == "".join(texts) + " And the rest."
    # One text block across the seam, as the decoded path writes it.
    indexes = [data["index"] for name, data in events if name == "content_block_delta"]
    assert indexes == [0] * (len(texts) + 1)
    continued = served.backup.requests[-1].body["messages"]
    prefill = {"type": "text", "text": "".join(texts)}
    assert continued[-1] == {"role": "assistant", "content": [prefill]}
    assert events[-2][1]["polyroute"]["provider"] == "backup"
