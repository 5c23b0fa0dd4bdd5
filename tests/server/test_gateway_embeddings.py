"""`/v1/embeddings` on `polyroute serve`, driven by the official `openai` SDK, and
`Router.embed` on the attempt engine chat streams use."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
import yaml
from structlog.testing import capture_logs

from polyroute import AllProvidersFailed, CapabilityNotSupportedError, InvalidRequestError, Router
from tests.server.helpers import gateway
from tests.upstreams.gemini import GeminiUpstream
from tests.upstreams.gemini import embedding_for as gemini_vector
from tests.upstreams.openai import OpenAIUpstream, embedding_for
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Served:
    url: str
    first: OpenAIUpstream
    second: OpenAIUpstream
    other: OpenAIUpstream
    gemini: GeminiUpstream

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)


def _config(first: Any, second: Any, other: Any, gemini: Any) -> dict[str, Any]:
    return {
        "providers": [
            {"name": "first", "type": "openai", "base_url": first.base_url, "models": ["emb"]},
            {"name": "second", "type": "openai", "base_url": second.base_url, "models": ["emb"]},
            {"name": "other", "type": "openai", "base_url": other.base_url,
             "models": ["emb-b", "emb-c"]},
            {"name": "gemini", "type": "gemini", "base_url": gemini.base_url,
             "models": ["embedder"]},
        ],
        "retry": {"attempts": 1},
        "cooldown": {"failures": 1000},
        "fallbacks": {"emb": ["emb-b"]},  # a chat chain: never taken by embeddings
        "embedding_fallbacks": {"emb-c": ["emb-b"]},
        "aliases": {"vectors": "emb"},
    }  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    servers = [await OpenAIUpstream().start() for _ in range(3)]
    gemini = await GeminiUpstream().start()
    path = tmp_path_factory.mktemp("embeddings") / "gateway.yaml"
    path.write_text(yaml.safe_dump(_config(*servers, gemini)))
    try:
        async with gateway(path) as process:
            yield Served(process.url, *servers, gemini)
    finally:
        for server in (*servers, gemini):
            await server.stop()
    assert process.code == 0


@pytest.fixture(autouse=True)
def fresh(served: Served) -> None:
    for server in (served.first, served.second, served.other, served.gemini):
        server.queue.clear()
        server.requests.clear()
    served.first.reverse_embeddings = False


async def test_vectors_through_the_sdk_in_base64_and_floats(served: Served) -> None:
    async with served.client() as client:
        raw = await client.embeddings.with_raw_response.create(model="vectors", input=["a", "bc"])
        packed = raw.parse()  # the SDK asks for base64 and decodes it
        floats = await client.embeddings.create(
            model="emb", input="a", encoding_format="float", dimensions=4
        )
    assert [item.embedding for item in packed.data] == [embedding_for("a"), embedding_for("bc")]
    assert raw.headers["x-polyroute-provider"] == "first"
    assert raw.headers["x-polyroute-attempts"] == "1"
    assert packed.usage.prompt_tokens == 2
    assert floats.data[0].embedding == embedding_for("a", 4)
    assert served.first.requests[-1].body["dimensions"] == 4
    # Each asked of the upstream in the client's form, and its answer relayed as it came
    # (the test server writes JSON with spaces, the gateway's own encoder without).
    assert [r.body["encoding_format"] for r in served.first.requests] == ["base64", "float"]
    assert raw.content.startswith(b'{"object": "list", "data": [{"object": "embedding"')


@pytest.mark.parametrize("form", ["base64", "float"])
async def test_an_answer_out_of_order_is_put_in_order(served: Served, form: Any) -> None:
    served.first.reverse_embeddings = True
    async with served.client() as client:
        raw = await client.embeddings.with_raw_response.create(
            model="emb", input=["a", "bc", "d"], encoding_format=form
        )
    answer = raw.parse()
    assert raw.content.startswith(b'{"object":"list"')  # encoded by the gateway
    assert [item.index for item in answer.data] == [0, 1, 2]
    if form == "base64":  # the SDK leaves a base64 it was asked for to the caller
        floats = [list(struct.unpack("<8f", base64.b64decode(i.embedding))) for i in answer.data]
    else:
        floats = [item.embedding for item in answer.data]
    assert floats == [embedding_for("a"), embedding_for("bc"), embedding_for("d")]


async def test_a_failed_entry_hands_over_to_another_of_the_same_model(served: Served) -> None:
    served.first.then(Script(status=500, error_body="{}"))
    async with served.client() as client:
        raw = await client.embeddings.with_raw_response.create(model="emb", input="a")
    assert raw.parse().data[0].embedding == embedding_for("a")
    assert (raw.headers["x-polyroute-provider"], raw.headers["x-polyroute-attempts"]) == (
        "second",
        "2",
    )


async def test_chat_fallbacks_are_never_taken_but_embedding_fallbacks_are(
    served: Served,
) -> None:
    served.first.then(Script(status=500, error_body="{}"))
    served.second.then(Script(status=500, error_body="{}"))
    async with served.client() as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.embeddings.create(model="emb", input="a")
        assert caught.value.status_code == 502
        assert served.other.requests == []  # emb-b is emb's chat fallback only
        served.other.then(Script(status=500, error_body="{}"))  # emb-c fails...
        raw = await client.embeddings.with_raw_response.create(model="emb-c", input="a")
    assert raw.headers["x-polyroute-model"] == "emb-b"  # ...and its embedding fallback serves
    assert [r.body["model"] for r in served.other.requests] == ["emb-c", "emb-b"]


async def test_a_gemini_entry_embeds_through_the_gateway(served: Served) -> None:
    async with served.client() as client:
        answer = await client.embeddings.create(
            model="embedder", input=["x", "y"], encoding_format="float"
        )
    assert [item.embedding for item in answer.data] == [gemini_vector("x"), gemini_vector("y")]


async def test_bad_requests_and_unknown_models_are_refused(served: Served) -> None:
    async with served.client() as client:
        with pytest.raises(openai.NotFoundError):
            await client.embeddings.create(model="nope", input="a")
        with pytest.raises(openai.BadRequestError, match="input"):
            await client.embeddings.create(model="emb", input=[])
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{served.url}/metrics") as metrics,
    ):
        text = await metrics.text()
    assert 'polyroute_requests_total{endpoint="embeddings",model="(unknown)",status="404"}' in text


async def test_the_engine_logs_the_same_events_for_embeddings_and_chat(
    served: Served, tmp_path: Path
) -> None:
    """One failed entry then a served one: chat and embeddings walk the same engine,
    and say so in the same events (a stream adds its first chunk)."""
    config = _config(served.first, served.second, served.other, served.gemini)
    names: dict[str, list[str]] = {}
    async with Router.from_config(config) as router:
        for operation in ("chat", "embeddings"):
            served.first.then(Script(status=500, error_body="{}"))
            with capture_logs() as logs:
                if operation == "chat":
                    await router.complete_text("emb", [{"role": "user", "content": "Hi"}])
                else:
                    await router.embed("emb", "Hi")
            events = [log["event"] for log in logs if log["event"] != "stream.first_chunk"]
            names[operation] = events
        served.first.then(Script(status=500, error_body="{}"))
        served.second.then(Script(status=500, error_body="{}"))
        with pytest.raises(AllProvidersFailed):
            await router.embed("emb", "Hi")
    darkai = {"name": "d", "type": "darkai", "api_endpoint": "http://127.0.0.1:9/chat"}
    async with Router.from_config({"providers": [darkai]}) as chat_only:
        with pytest.raises(CapabilityNotSupportedError):
            await chat_only.embed("gpt-4o", "Hi")
    assert (
        names["chat"]
        == names["embeddings"]
        == [
            "route.start",
            "attempt.start",
            "attempt.failed",
            "route.next_provider",
            "attempt.start",
            "route.done",
        ]
    )


async def test_router_embed_gives_either_form_and_refuses_a_third(served: Served) -> None:
    config = _config(served.first, served.second, served.other, served.gemini)
    async with Router.from_config(config) as router:
        packed = await router.embed("vectors", ["a", "bc"], encoding_format="base64")
        floats = await router.embed("emb", "a")
        with pytest.raises(InvalidRequestError, match="encoding_format"):
            await router.embed("emb", "a", encoding_format="hex")  # type: ignore[arg-type]
    sent = [r.body["encoding_format"] for r in served.first.requests]
    assert sent == ["base64", "float"]
    assert packed.vectors == [embedding_for("a"), embedding_for("bc")]
    assert packed.base64[0] == base64.b64encode(struct.pack("<8f", *embedding_for("a"))).decode()
    assert (floats.vectors, floats.model, floats.provider) == ([embedding_for("a")], "emb", "first")


async def test_base64_that_does_not_decode_is_a_502_for_a_float_client(served: Served) -> None:
    """The upstream sent base64 unasked, with a letter outside the alphabet: found
    only when decoding it for a client that wants floats."""
    bad = b'{"object": "list", "data": [{"index": 0, "embedding": "AAC!Pw=="}], "model": "emb"}'
    served.first.then(Script(raw=bad))
    async with served.client() as client:
        with pytest.raises(openai.InternalServerError, match="does not decode") as caught:
            await client.embeddings.create(model="emb", input="a", encoding_format="float")
    assert caught.value.status_code == 502
