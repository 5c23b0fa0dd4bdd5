"""`polyroute serve`, run as users run it (a subprocess on a free loopback port), in
front of a local OpenAI-format upstream, driven by the official openai client and by
raw HTTP for what a client library would not send."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import openai
import pytest
import pytest_asyncio
import yaml

from tests.server.helpers import gateway
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script
from tests.upstreams.server import wait_closed

pytestmark = pytest.mark.asyncio(loop_scope="module")
HI = [{"role": "user", "content": "Hi"}]


@dataclass
class Served:
    base_url: str
    upstream: OpenAIUpstream
    backup: OpenAIUpstream

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key="unused", max_retries=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    upstream = await OpenAIUpstream(models=["m", "m2"]).start()
    backup = await OpenAIUpstream(models=["m2"]).start()
    config = tmp_path_factory.mktemp("gateway") / "gateway.yaml"
    entries = [
        {"name": "up", "type": "openai", "base_url": upstream.base_url, "models": ["m", "m2"]},
        {"name": "backup", "type": "openai", "base_url": backup.base_url, "models": ["m2"]},
    ]
    settings = {"retry": {"attempts": 1}, "cooldown": {"failures": 1000}, "aliases": {"fast": "m"}}
    config.write_text(
        yaml.safe_dump({"providers": entries, **settings, "gateway": {"max_body_bytes": 65536}})
    )
    try:
        async with gateway(config) as process:
            yield Served(f"{process.url}/v1", upstream, backup)
    finally:
        await upstream.stop()
        await backup.stop()
    assert process.code == 0


@pytest.fixture(autouse=True)
def fresh_scripts(served: Served) -> None:
    for server in (served.upstream, served.backup):
        server.reset()


async def test_a_whole_completion_through_the_sync_client(served: Served) -> None:
    with served.client() as client:
        raw = await asyncio.to_thread(
            client.chat.completions.with_raw_response.create, model="fast", messages=HI
        )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello, world!"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 7
    assert raw.headers["x-polyroute-provider"] == "up"
    assert raw.headers["x-polyroute-model"] == "m"
    assert raw.headers["x-polyroute-attempts"] == "1"


async def test_a_stream_through_the_async_client_ends_with_the_facts(served: Served) -> None:
    client = served.async_client()
    stream = await client.chat.completions.create(
        model="m", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    await client.close()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world!"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 7
    facts = {"provider": "up", "model": "m", "attempts": 1}
    # "m" on a loopback server is in no price catalogue: unpriced, never a silent 0.
    assert chunks[-1].model_extra == {
        "polyroute": {**facts, "cost_usd": None, "cost_status": "unpriced"}
    }


async def test_tool_calls_and_extra_body_pass_through(served: Served) -> None:
    start = {"index": 0, "id": "call_1", "type": "function"}
    served.upstream.default = Script(
        chunks=[
            {"tool_calls": [{**start, "function": {"name": "lookup", "arguments": '{"q":'}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": ' "sky"}'}}]},
        ],
        finish_reason="tool_calls",
    )
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    client = served.async_client()
    stream = await client.chat.completions.create(
        model="m",
        messages=HI,
        tools=tools,
        stream=True,
        extra_body={"top_k": 5},  # type: ignore[arg-type]
    )
    chunks = [chunk async for chunk in stream]
    await client.close()
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert calls[0].id == "call_1"
    assert calls[0].function is not None
    assert calls[0].function.name == "lookup"
    assert (
        "".join(call.function.arguments or "" for call in calls if call.function) == '{"q": "sky"}'
    )
    sent = served.upstream.requests[0].body
    assert (sent["tools"], sent["top_k"]) == (tools, 5)


async def test_errors_map_to_the_clients_exception_classes(served: Served) -> None:
    client = served.async_client()
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(model="nope", messages=HI)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="m", messages=[{"role": "robot", "content": "x"}]
        )  # type: ignore[misc, list-item]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        await client.chat.completions.create(model="m", messages=HI, temperature=7)
    served.upstream.default = Script(status=503, error_body='{"error": {"message": "overloaded"}}')
    with pytest.raises(openai.InternalServerError) as failed:
        await client.chat.completions.create(model="m", messages=HI)
    assert failed.value.status_code == 502
    upstream_url = f"{served.upstream.base_url}/chat/completions"
    assert f"  - up (m): HTTP 503 from {upstream_url}: overloaded" in str(failed.value)
    assert failed.value.code == "all_providers_failed"
    await client.close()


async def test_a_failure_before_the_first_chunk_is_relayed_to_the_next_entry(
    served: Served,
) -> None:
    served.upstream.default = Script(status=503, error_body="{}")
    async with served.async_client() as client:
        completion = await client.chat.completions.create(model="m2", messages=HI)
    assert completion.choices[0].message.content == "Hello, world!"
    assert len(served.backup.requests) == 1


async def test_a_cut_stream_ends_with_an_error_event_and_no_done(served: Served) -> None:
    served.upstream.default = Script(chunks=["Hel", "lo", "!"], reset_after=2)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{served.base_url}/chat/completions",
            json={"model": "m", "messages": HI, "stream": True},
        ) as response,
    ):
        assert response.status == 200
        body = (await response.read()).decode()
    events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_connection_error")
    assert error["message"] == "up: the upstream closed the connection after 5 characters"
    chunks = [json.loads(event)["choices"][0]["delta"] for event in events[:-1]]
    assert [delta.get("role") for delta in chunks].count("assistant") == 1
    assert "".join(delta.get("content") or "" for delta in chunks) == "Hello"  # each once
    client = served.async_client()

    async def consume() -> None:
        stream = await client.chat.completions.create(model="m", messages=HI, stream=True)
        async for _chunk in stream:
            pass

    with pytest.raises(openai.APIError, match="the upstream closed the connection after 5"):
        await consume()
    await client.close()


async def test_bad_json_and_a_body_too_large_are_openai_errors(served: Served) -> None:
    url = f"{served.base_url}/chat/completions"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=b"{not json", headers={"x-request-id": "req-7"}) as bad:
            assert bad.status == 400
            assert bad.headers["x-request-id"] == "req-7"
            assert (await bad.json())["error"]["type"] == "invalid_request_error"
        huge = {"model": "m", "messages": [{"role": "user", "content": "x" * 70000}]}
        async with session.post(url, json=huge) as large:
            assert large.status == 413
            assert (await large.json())["error"]["code"] == "request_too_large"
    assert served.upstream.requests == []


async def test_models_health_and_readiness(served: Served) -> None:
    async with served.async_client() as client:
        models = await client.models.list()
    assert {model.id for model in models.data} >= {"m", "m2", "fast"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{served.base_url}/models/m2") as one:
            assert (await one.json())["id"] == "m2"
        async with session.get(f"{served.base_url}/models/unknown") as missing:
            assert missing.status == 404
        root = served.base_url.removesuffix("/v1")
        async with session.get(f"{root}/healthz") as health:
            assert health.status == 200
        async with session.get(f"{root}/readyz") as ready:
            assert (ready.status, (await ready.json())["status"]) == (200, "ready")


async def test_a_client_that_goes_away_closes_the_upstream_request(served: Served) -> None:
    served.upstream.default = Script(chunks=["Hel", "lo"], stall_after=1)
    url = f"{served.base_url}/chat/completions"
    body = {"model": "m", "messages": HI, "stream": True}
    async with aiohttp.ClientSession() as session:
        response = await session.post(url, json=body)
        assert b"Hel" in await response.content.readuntil(b"Hel")
        response.close()  # the client hangs up mid-answer
    await wait_closed(served.upstream.requests[0], within=1.0)
    assert served.upstream.requests[0].completed is False


GUIDE = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()


async def test_the_guide_example_runs_against_the_gateway(served: Served) -> None:
    (example,) = re.findall(r"```python\n(.*?)```", GUIDE, flags=re.DOTALL)
    code = example.replace("http://127.0.0.1:8000/v1", served.base_url).replace("sim-large", "m")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert out.decode() == "Hello, world!\n"
