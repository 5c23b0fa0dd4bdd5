"""Anthropic's Messages and OpenAI's Responses to an OpenAI-format entry: the gateway takes
the upstream's plain text chunks as runs of texts (no event object or typed delta per
chunk, core/wire.py) and writes each text in its own dialect's event. The official SDKs
must read exactly what the decoded path gives: the same gateway's model ``atomic``
(``tool_calls: atomic``, under which nothing is relayed). A malformed chunk never
reaches the client, and a cut answer continues from exactly the text delivered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
import pytest_asyncio

from polyroute import InvalidRequestError, Router, WireDelta
from polyroute.server.dialects.messages import MessagesDialect
from polyroute.server.dialects.responses import ResponsesDialect
from tests.server.helpers import dialect_gateway
from tests.upstreams.openai import OpenAIUpstream, chat_answer, chat_chunk
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")
HI = [{"role": "user", "content": "Hi"}]
TEXTS = ["Relayed", " as", " it", " came: ", "\u00e9\U0001f600", ' "quoted"', "\n"]


@dataclass
class Served:
    url: str
    upstream: OpenAIUpstream
    backup: OpenAIUpstream

    def anthropic(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.url, api_key="unused", max_retries=0)

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    folder = tmp_path_factory.mktemp("translated-pass-through")
    settings = {"cooldown": {"failures": 1000}, "per_model": {"atomic": {"tool_calls": "atomic"}}}
    async with dialect_gateway(folder, **settings) as (url, upstreams):
        yield Served(url, upstreams.openai, upstreams.backup)


@pytest.fixture(autouse=True)
def fresh_scripts(served: Served) -> None:
    served.upstream.reset()
    served.backup.reset()


WHOLE = chat_answer(
    chat_chunk("", role=True), *map(chat_chunk, TEXTS), chat_chunk(None, finish="stop")
)


async def messages_events(served: Served, model: str) -> list[dict[str, Any]]:
    """The streamed Messages answer's events as the SDK reads them, without the message
    id and the polyroute facts (they name the request)."""
    async with (
        served.anthropic() as client,
        client.messages.stream(model=model, max_tokens=100, messages=HI) as stream,  # type: ignore[arg-type]
    ):
        events = [event.model_dump() async for event in stream]
    for event in events:
        event.pop("polyroute", None)
        if event["type"] == "message_start":
            event["message"].pop("id")
            event["message"]["model"] = "-"
        if event["type"] == "message_delta":
            event.pop("usage", None)
        if "snapshot" in event:
            event.pop("snapshot")
        if event["type"] == "message_stop":
            event.pop("message", None)
    return events


async def responses_events(served: Served, model: str) -> list[dict[str, Any]]:
    """The streamed Responses answer's events, without what names the request."""
    async with served.openai() as client:
        stream = await client.responses.create(model=model, input="Hi", stream=True)
        events = [event.model_dump() async for event in stream]
    for event in events:
        event.pop("polyroute", None)
        response = event.pop("response", None)  # ids, model, times: kept is its text
        if event["type"] == "response.completed":
            event["text"] = response["output"][0]["content"][0]["text"]
        if "item_id" in event:
            event["item_id"] = event["item_id"].split("_")[0]
        if isinstance(event.get("item"), dict) and "id" in event["item"]:
            event["item"]["id"] = event["item"]["id"].split("_")[0]
    return events


async def test_a_messages_answer_reads_as_the_decoded_one(served: Served) -> None:
    served.upstream.queue.extend([Script(raw=WHOLE), Script(raw=WHOLE)])
    relayed = await messages_events(served, "m")
    decoded = await messages_events(served, "atomic")
    assert relayed == decoded
    texts = [e["delta"]["text"] for e in relayed if e["type"] == "content_block_delta"]
    assert texts == TEXTS  # one event per upstream chunk, in one text block
    assert {e["index"] for e in relayed if "index" in e} == {0}


async def test_a_responses_answer_reads_as_the_decoded_one(served: Served) -> None:
    served.upstream.queue.extend([Script(raw=WHOLE), Script(raw=WHOLE)])
    relayed = await responses_events(served, "m")
    decoded = await responses_events(served, "atomic")
    assert relayed == decoded
    deltas = [e["delta"] for e in relayed if e["type"] == "response.output_text.delta"]
    assert deltas == TEXTS
    assert relayed[-1] == {**relayed[-1], "type": "response.completed", "text": "".join(TEXTS)}
    numbers = [e["sequence_number"] for e in relayed]
    assert numbers == list(range(len(numbers)))


async def test_tool_calls_around_relayed_text_read_as_decoded(served: Served) -> None:
    call = chat_chunk(None)
    call["choices"][0]["delta"] = {
        "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": '{"a": 1}'}},
        ]
    }  # fmt: skip
    mixed = chat_answer(
        chat_chunk("", role=True),
        chat_chunk("Let me "),
        chat_chunk("look."),
        call,
        chat_chunk(None, finish="tool_calls"),
    )
    served.upstream.queue.extend([Script(raw=mixed), Script(raw=mixed)])
    relayed = await messages_events(served, "m")
    decoded = await messages_events(served, "atomic")
    # atomic holds the call until it is whole: one input_json_delta either way here
    assert relayed == decoded
    kinds = [e["content_block"]["type"] for e in relayed if e["type"] == "content_block_start"]
    assert kinds == ["text", "tool_use"]


async def test_a_malformed_chunk_never_reaches_a_messages_client(served: Served) -> None:
    broken = b'{"id":"chatcmpl-upstream","choices":[{"index":0,"delta":{"content":"lost'
    served.upstream.queue.append(
        Script(raw=chat_answer(chat_chunk("Before "), chat_chunk("the break"), broken))
    )
    served.backup.queue.append(Script(chunks=[", after it."]))
    async with (
        served.anthropic() as client,
        client.messages.stream(model="m", max_tokens=100, messages=HI) as stream,  # type: ignore[arg-type]
    ):
        text = "".join([piece async for piece in stream.text_stream])
    assert text == "Before the break, after it."
    assert "lost" not in text


async def test_a_cut_answer_continues_from_exactly_the_text_delivered(served: Served) -> None:
    cut = chat_answer(chat_chunk("", role=True), *map(chat_chunk, TEXTS), done=False)
    served.upstream.queue.append(Script(raw=cut, reset_after=0))
    served.backup.queue.append(Script(chunks=[" And the rest."]))
    async with served.openai() as client:
        stream = await client.responses.create(model="m", input="Hi", stream=True)
        events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "".join(TEXTS) + " And the rest."
    continued = served.backup.requests[-1].body["messages"]
    assert [m for m in continued if m["role"] == "assistant"] == [
        {"role": "assistant", "content": "".join(TEXTS)}
    ]


async def test_the_router_relays_openai_chunks_to_a_consumer_of_either_format(
    served: Served,
) -> None:
    # The gateway's Messages asks for both formats: an OpenAI entry's texts come as runs.
    served.upstream.queue.append(Script(raw=WHOLE))
    config = {"providers": [{"name": "up", "type": "openai", "base_url": served.upstream.base_url,
                             "models": ["m"]}]}  # fmt: skip
    async with Router.from_config(config) as router:
        stream = router.stream("m", HI, pass_through=("anthropic", "openai"))
        deltas = [delta async for delta in stream.deltas()]
    runs = [d for d in deltas if isinstance(d, WireDelta)]
    assert runs
    assert [t for run in runs for t in run.texts] == TEXTS
    assert stream.text == "".join(TEXTS)


async def test_an_unknown_pass_through_format_is_refused_at_once(served: Served) -> None:
    config = {"providers": [{"name": "up", "type": "openai", "base_url": served.upstream.base_url,
                             "models": ["m"]}]}  # fmt: skip
    async with Router.from_config(config) as router:
        with pytest.raises(InvalidRequestError, match="pass_through: unknown format 'gemini'"):
            router.stream("m", HI, pass_through=("openai", "gemini"))  # type: ignore[arg-type]


async def test_the_dialects_ask_for_the_formats_they_take(served: Served) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": HI, "stream": True}
    messages = await MessagesDialect().read(body, {})
    assert messages.pass_through == ("anthropic", "openai")
    assert (await MessagesDialect().read({**body, "stream": False}, {})).pass_through is None
    config = {"providers": [{"name": "up", "type": "openai", "base_url": served.upstream.base_url,
                             "models": ["m"]}]}  # fmt: skip
    async with Router.from_config(config) as router:
        dialect = ResponsesDialect(router.records)
        responses = await dialect.read({"model": "m", "input": "Hi", "stream": True}, {})
    assert responses.pass_through == ("openai",)
