"""Chat completions to an OpenAI-format entry: the gateway relays the upstream's text
chunks as their bytes (core/wire.py), rewriting only the id and model every chunk of
the answer must say, and keeps every guarantee of the decoded path: no malformed
chunk reaches the client, a cut answer continues from exactly what was delivered."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import pytest_asyncio

from tests.server.helpers import dialect_gateway
from tests.upstreams.openai import OpenAIUpstream, chat_answer, chat_chunk
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")
HI = [{"role": "user", "content": "Hi"}]
TEXTS = ["Relayed", " as", " it", " came: ", "\u00e9\U0001f600", ' "quoted"']


@dataclass
class Served:
    url: str
    upstream: OpenAIUpstream
    backup: OpenAIUpstream


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    folder = tmp_path_factory.mktemp("pass-through")
    async with dialect_gateway(folder, cooldown={"failures": 1000}) as (url, upstreams):
        yield Served(url, upstreams.openai, upstreams.backup)


@pytest.fixture(autouse=True)
def fresh_scripts(served: Served) -> None:
    served.upstream.reset()
    served.backup.reset()


async def post(served: Served) -> tuple[bytes, str, list[dict[str, Any]]]:
    """The gateway's streamed answer: its bytes, its request id and its chunks."""
    body = {"model": "m", "messages": HI, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{served.url}/v1/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        raw = await response.read()
        request_id = response.headers["x-request-id"]
    chunks = [
        json.loads(line[6:]) for line in raw.decode().split("\n\n") if line.startswith("data: {")
    ]
    return raw, request_id, chunks


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )


async def test_text_chunks_reach_the_client_as_the_upstream_sent_them(served: Served) -> None:
    sent = [chat_chunk(text, obfuscation=f"pad{i}", usage=None) for i, text in enumerate(TEXTS)]
    served.upstream.queue.append(Script(raw=chat_answer(*sent, chat_chunk(None, finish="stop"))))
    raw, request_id, chunks = await post(served)
    ours = f'"id":"chatcmpl-{request_id}"'.encode()
    for item in sent:  # byte for byte, the per-chunk field included, but for the id
        assert orjson.dumps(item).replace(b'"id":"chatcmpl-upstream"', ours) in raw
    assert {c["id"] for c in chunks} == {f"chatcmpl-{request_id}"}
    assert {c["model"] for c in chunks} == {"m"}
    assert text_of(chunks) == "".join(TEXTS)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["polyroute"]["provider"] == "up"


async def test_the_official_client_reads_a_relayed_answer(served: Served) -> None:
    sent = [chat_chunk(text, obfuscation="x") for text in TEXTS]
    served.upstream.queue.append(Script(raw=chat_answer(*sent, chat_chunk(None, finish="length"))))
    client = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(model="m", messages=HI, stream=True)  # type: ignore[arg-type]
        received = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == "".join(
        TEXTS
    )
    assert received[-1].choices[0].finish_reason == "length"
    assert len({c.id for c in received}) == 1


async def test_spaced_json_is_relayed_with_the_id_rewritten(served: Served) -> None:
    sent = [chat_chunk(text) for text in TEXTS]
    served.upstream.queue.append(
        Script(raw=chat_answer(*sent, chat_chunk(None, finish="stop"), spaced=True))
    )
    raw, request_id, chunks = await post(served)
    assert b'"system_fingerprint": "fp_up"' in raw  # the upstream's own bytes
    assert {c["id"] for c in chunks} == {f"chatcmpl-{request_id}"}
    assert text_of(chunks) == "".join(TEXTS)


async def test_chunks_that_each_name_another_id_all_say_ours(served: Served) -> None:
    sent = [{**chat_chunk(text), "id": f"chatcmpl-{i}"} for i, text in enumerate(TEXTS)]
    served.upstream.queue.append(Script(raw=chat_answer(*sent, chat_chunk(None, finish="stop"))))
    _, request_id, chunks = await post(served)
    assert {c["id"] for c in chunks} == {f"chatcmpl-{request_id}"}
    assert text_of(chunks) == "".join(TEXTS)


async def test_a_malformed_chunk_never_reaches_the_client(served: Served) -> None:
    broken = b'{"id":"chatcmpl-upstream","choices":[{"index":0,"delta":{"content":"lost'
    served.upstream.queue.append(
        Script(raw=chat_answer(chat_chunk("Before "), chat_chunk("the break"), broken))
    )
    served.backup.queue.append(Script(chunks=[", after it."]))
    raw, _, chunks = await post(served)
    assert b"lost" not in raw
    assert text_of(chunks) == "Before the break, after it."
    facts = chunks[-1]["polyroute"]
    assert (facts["provider"], facts["attempts"]) == ("backup", 2)


async def test_a_cut_answer_continues_from_exactly_the_text_delivered(served: Served) -> None:
    served.upstream.queue.append(
        Script(raw=chat_answer(*map(chat_chunk, TEXTS), done=False), reset_after=0)
    )
    served.backup.queue.append(Script(chunks=[" And the rest."]))
    _, _, chunks = await post(served)
    assert text_of(chunks) == "".join(TEXTS) + " And the rest."
    continued = served.backup.requests[-1].body["messages"]
    assert [m for m in continued if m["role"] == "assistant"] == [
        {"role": "assistant", "content": "".join(TEXTS)}
    ]
    assert chunks[-1]["polyroute"]["provider"] == "backup"
