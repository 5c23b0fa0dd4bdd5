"""`/v1/embeddings` on `polyroute serve`, driven by the official `openai` SDK, and
`Router.embed` on the attempt engine chat streams use."""

from __future__ import annotations

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

from polyroute import AllProvidersFailed, CapabilityNotSupportedError, Router
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
