"""`/v1/responses` (OpenAI's Responses API) on `polyroute serve`, driven by the official
`openai` SDK, in front of an OpenAI-format upstream and an Anthropic-format one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
import yaml

from tests.server.helpers import Upstreams, dialect_gateway, gateway
from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"},
}


@dataclass
class Served:
    url: str
    openai: OpenAIUpstream
    backup: OpenAIUpstream
    claude: AnthropicUpstream
    upstreams: Upstreams

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    folder = tmp_path_factory.mktemp("responses")
    async with dialect_gateway(folder, cooldown={"failures": 1000}) as (url, upstreams):
        yield Served(url, upstreams.openai, upstreams.backup, upstreams.claude, upstreams)


@pytest.fixture(autouse=True)
def fresh_scripts(served: Served) -> None:
    served.upstreams.reset()


async def test_a_whole_response_from_an_openai_format_upstream(served: Served) -> None:
    async with served.client() as client:
        response = await client.responses.create(
            model="m", input="Hi", instructions="Be brief.", max_output_tokens=50
        )
    assert response.output_text == "Hello, world!"
    assert response.status == "completed"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (3, 4)
    sent = served.openai.requests[0].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert sent["max_completion_tokens"] == 50


async def test_a_stream_is_accumulated_by_the_sdk(served: Served) -> None:
    kinds: list[str] = []
    numbers: list[int] = []
    async with (
        served.client() as client,
        client.responses.stream(model="m", input="Hi") as stream,
    ):
        async for item in stream:
            kinds.append(item.type)
            numbers.append(item.sequence_number)
        response = await stream.get_final_response()
    assert response.output_text == "Hello, world!"
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert numbers == list(range(len(numbers)))


async def test_a_function_calling_loop(served: Served) -> None:
    call = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]}  # fmt: skip
    served.openai.then(Script(chunks=[call], finish_reason="tool_calls"))
    async with served.client() as client:
        first = await client.responses.create(
            model="m",
            input="Weather in Paris?",
            tools=[WEATHER],
            store=False,  # type: ignore[list-item]
        )
        calls = [item for item in first.output if item.type == "function_call"]
        assert [(c.call_id, c.name, c.arguments) for c in calls] == [
            ("call_1", "get_weather", '{"city": "Paris"}')
        ]
        history: list[Any] = [
            {"role": "user", "content": "Weather in Paris?"},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ]
        final = await client.responses.create(
            model="m",
            input=history,
            tools=[WEATHER],
            store=False,  # type: ignore[list-item]
        )
    assert final.output_text == "Hello, world!"
    sent = served.openai.requests[1].body["messages"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


async def test_json_schema_output_and_dropped_options(served: Served) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    text = {"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}}
    async with served.client() as client:
        raw = await client.responses.with_raw_response.create(
            model="m",
            input="Give JSON",
            text=text,  # type: ignore[arg-type]
            tools=[WEATHER, {"type": "web_search"}],  # type: ignore[list-item]
            extra_body={"client_metadata": {"x": "y"}},
        )
    assert raw.parse().output_text == "Hello, world!"
    sent = served.openai.requests[0].body
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema, "strict": True},
    }
    assert raw.headers["x-polyroute-dropped"].split(", ") == ["client_metadata", "web_search tools"]


async def test_a_custom_tool_call_comes_back_as_one_from_either_format(served: Served) -> None:
    patch = '*** Begin Patch\n*** Add File: a.txt\n+"hi"\n*** End Patch\n'
    anthropic_call = {"tool_use": {"id": "toolu_1", "name": "apply_patch",
                                   "json": [json.dumps({"input": patch})]}}  # fmt: skip
    served.claude.then(Script(chunks=[anthropic_call], finish_reason="tool_calls"))
    async with served.client() as client:
        response = await client.responses.create(
            model="claude-local-large",
            input="Add a file",
            tools=[PATCH],
            store=False,  # type: ignore[list-item]
        )
    calls = [item for item in response.output if item.type == "custom_tool_call"]
    assert [(c.name, c.input, c.call_id) for c in calls] == [("apply_patch", patch, "toolu_1")]
    tool = served.claude.requests[0].body["tools"][0]
    assert tool["name"] == "apply_patch"
    assert tool["input_schema"]["properties"]["input"]["type"] == "string"


async def test_a_relay_mid_answer_is_invisible_to_the_sdk(served: Served) -> None:
    served.openai.then(Script(chunks=["The answer ", "is forty", "-two."], reset_after=2))
    served.backup.then(Script(chunks=["is forty", "-two."]))
    async with (
        served.client() as client,
        client.responses.stream(model="m", input="Hi", store=False) as stream,
    ):
        response = await stream.get_final_response()
    assert response.output_text == "The answer is forty-two."
    assert response.status == "completed"


async def test_a_cut_answer_ends_with_response_failed(served: Served) -> None:
    served.openai.then(Script(chunks=["Hel", "lo"], reset_after=1))
    served.backup.then(Script(status=503, error_body="{}"))
    kinds: list[str] = []
    async with served.client() as client:
        stream = await client.responses.create(model="m", input="Hi", stream=True, store=False)
        async for item in stream:
            kinds.append(item.type)
    assert kinds[-1] == "response.failed"
    assert "response.completed" not in kinds


async def test_failures_before_output_get_their_real_status(served: Served) -> None:
    async with served.client() as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="nope", input="Hi")
        served.openai.then(Script(status=500, error_body="{}"))
        served.backup.then(Script(status=500, error_body="{}"))
        with pytest.raises(openai.InternalServerError) as caught:
            await client.responses.create(model="m", input="Hi", stream=True)
        assert caught.value.status_code == 502
        with pytest.raises(openai.BadRequestError, match="hosted tool 'web_search'"):
            await client.responses.create(
                model="m",
                input="Hi",
                tools=[WEATHER],  # type: ignore[list-item]
                tool_choice={"type": "web_search"},  # type: ignore[typeddict-item]
            )


async def test_stored_responses_and_their_ids(served: Served) -> None:
    async with served.client() as client:
        first = await client.responses.create(model="m", input="Hi")
        again = await client.responses.retrieve(first.id)
        assert again.output_text == "Hello, world!"
        served.openai.requests.clear()
        await client.responses.create(model="m", input="And?", previous_response_id=first.id)
        sent = served.openai.requests[0].body["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "user"]
        assert sent[1]["content"] == "Hello, world!"
        unstored = await client.responses.create(model="m", input="Hi", store=False)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(unstored.id)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.responses.create(model="m", input="x", previous_response_id="resp_no")
    assert caught.value.code == "previous_response_not_found"


async def test_previous_response_id_works_across_gateways_on_one_redis(
    tmp_path: Path, redis_url: str, served: Served
) -> None:
    config = tmp_path / "gateway.yaml"
    data = {
        "providers": served.upstreams.entries(),
        "state": {"backend": "redis", "url": redis_url},
    }
    config.write_text(yaml.safe_dump(data))
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(gateway(config))
        two = await stack.enter_async_context(gateway(config))
        async with (
            openai.AsyncOpenAI(base_url=f"{one.url}/v1", api_key="x", max_retries=0) as first,
            openai.AsyncOpenAI(base_url=f"{two.url}/v1", api_key="x", max_retries=0) as second,
        ):
            response = await first.responses.create(model="m", input="Hi")
            served.openai.requests.clear()
            follow = await second.responses.create(
                model="m", input="And?", previous_response_id=response.id
            )
            assert follow.output_text == "Hello, world!"
            assert (await second.responses.retrieve(response.id)).id == response.id
    sent = served.openai.requests[0].body["messages"]
    assert [m["content"] for m in sent] == ["Hi", "Hello, world!", "And?"]


async def test_upstream_reasoning_is_a_reasoning_item_with_a_summary(served: Served) -> None:
    served.openai.then(Script(chunks=[{"reasoning_content": "Two and two. "}, "Four."]))
    kinds: list[str] = []
    async with (
        served.client() as client,
        client.responses.stream(model="m", input="2+2?", store=False) as stream,
    ):
        async for item in stream:
            kinds.append(item.type)
        response = await stream.get_final_response()
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning = response.output[0]
    assert reasoning.summary[0].text == "Two and two. "  # type: ignore[union-attr]
    assert response.output_text == "Four."
    assert "response.reasoning_summary_text.delta" in kinds
    assert "response.reasoning_summary_part.done" in kinds


async def test_a_length_stop_is_an_incomplete_response(served: Served) -> None:
    async with served.client() as client:
        served.openai.then(Script(chunks=["Cut sh"], finish_reason="length"))
        whole = await client.responses.create(model="m", input="Hi", store=False)
        served.openai.then(Script(chunks=["Cut sh"], finish_reason="length"))
        async with client.responses.stream(model="m", input="Hi", store=False) as stream:
            kinds = [item.type async for item in stream]
    assert whole.status == "incomplete"
    assert whole.incomplete_details is not None
    assert whole.incomplete_details.reason == "max_output_tokens"
    assert kinds[-1] == "response.incomplete"
    assert "response.completed" not in kinds


async def test_text_delta_events_carry_every_field(served: Served) -> None:
    body = {"model": "m", "input": "Hi", "stream": True, "store": False}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{served.url}/v1/responses", json=body) as response,
    ):
        text = (await response.read()).decode()
    events = [json.loads(block.split("\ndata: ", 1)[1]) for block in text.strip().split("\n\n")]
    deltas = [event for event in events if event["type"] == "response.output_text.delta"]
    item_id = deltas[0]["item_id"]
    assert [event["delta"] for event in deltas] == ["Hello", ", ", "world", "!"]
    assert deltas[0] == {
        "type": "response.output_text.delta",
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "logprobs": [],
        "delta": "Hello",
        "sequence_number": 4,
    }
    assert [event["sequence_number"] for event in events] == list(range(len(events)))


async def test_a_gateway_that_stores_nothing_refuses_store_true(tmp_path: Path) -> None:
    settings = {"responses_store": False}
    async with dialect_gateway(tmp_path, gateway=settings) as (url, _):  # noqa: SIM117 - needs url
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
            with pytest.raises(openai.BadRequestError, match="responses_store is false"):
                await client.responses.create(model="m", input="Hi", store=True)
            kept = await client.responses.create(model="m", input="Hi")  # store left out
            assert kept.output_text == "Hello, world!"
            assert kept.store is False
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(kept.id)
