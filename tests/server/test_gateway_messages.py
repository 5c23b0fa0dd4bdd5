"""`/v1/messages` (Anthropic's Messages API) on `polyroute serve`, driven by the official
`anthropic` SDK, in front of an OpenAI-format upstream and an Anthropic-format one."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
import pytest_asyncio

from tests.server.helpers import Upstreams, dialect_gateway
from tests.upstreams.anthropic import AnthropicUpstream, anthropic_error
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")
HI = [{"role": "user", "content": "Hi"}]
FIXTURES = Path(__file__).parent.parent / "agents" / "fixtures"
WEATHER = {
    "name": "get_weather",
    "description": "Weather now",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@dataclass
class Served:
    url: str
    openai: OpenAIUpstream
    backup: OpenAIUpstream
    claude: AnthropicUpstream
    upstreams: Upstreams

    def client(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=self.url, api_key="unused", max_retries=0, **kwargs
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    settings = {
        "cooldown": {"failures": 1000},
        "per_model": {"atomic": {"tool_calls": "atomic"}},
        "gateway": {"max_body_bytes": 262144},
    }
    async with dialect_gateway(tmp_path_factory.mktemp("messages"), **settings) as (url, up):
        yield Served(url, up.openai, up.backup, up.claude, up)


@pytest.fixture(autouse=True)
def fresh_scripts(served: Served) -> None:
    served.upstreams.reset()


async def test_a_whole_message_from_an_openai_format_upstream(served: Served) -> None:
    async with served.client() as client:
        raw = await client.messages.with_raw_response.create(model="m", max_tokens=100, messages=HI)
    message = await raw.parse()
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello, world!"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 3
    assert message.usage.output_tokens == 4
    assert raw.headers["x-polyroute-provider"] == "up"
    sent = served.openai.requests[0].body
    assert sent["max_tokens"] == 100
    assert sent["messages"] == HI


async def test_a_stream_is_accumulated_by_the_sdk(served: Served) -> None:
    async with (
        served.client() as client,
        client.messages.stream(model="m", max_tokens=100, messages=HI) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
    assert "".join(texts) == "Hello, world!"
    assert message.content[0].text == "Hello, world!"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 4


async def test_the_event_grammar_is_exactly_anthropics(served: Served) -> None:
    body = {"model": "m", "max_tokens": 50, "stream": True, "messages": HI}
    events = await _raw_events(served.url, body)
    kinds = [kind for kind, _ in events]
    assert kinds == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == kind for kind, data in events)
    start = events[0][1]["message"]
    assert start["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert {data.get("index") for _, data in events[2:8]} == {0}
    last = events[-2][1]
    assert last["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    facts = {
        "provider": "up",
        "model": "m",
        "attempts": 1,
        "cost_usd": None,
        "cost_status": "unpriced",
    }
    assert last["polyroute"] == facts


async def test_a_tool_use_loop_through_an_openai_format_upstream(served: Served) -> None:
    call = {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ]
    }
    served.openai.then(Script(chunks=[call], finish_reason="tool_calls"))
    question = [{"role": "user", "content": "Weather in Paris?"}]
    async with served.client() as client:
        first = await client.messages.create(
            model="m", max_tokens=100, messages=question, tools=[WEATHER]
        )
        assert first.stop_reason == "tool_use"
        use = first.content[0]
        assert use.type == "tool_use"
        assert (use.id, use.name, use.input) == ("call_1", "get_weather", {"city": "Paris"})
        result = {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}
        turns = [
            *question,
            {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
            {"role": "user", "content": [result]},
        ]
        final = await client.messages.create(
            model="m",
            max_tokens=100,
            messages=turns,
            tools=[WEATHER],  # type: ignore[arg-type]
        )
    assert final.content[0].text == "Hello, world!"  # type: ignore[union-attr]
    sent = served.openai.requests[1].body
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


async def test_streamed_tool_input_arrives_as_json_deltas(served: Served) -> None:
    fragments = ['{"city": ', '"Oslo"}']
    chunks: list[Any] = [
        {"tool_calls": [{"index": 0, "id": "call_2", "type": "function", "function": {
            "name": "get_weather", "arguments": fragments[0]}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": fragments[1]}}]},
    ]  # fmt: skip
    served.openai.then(Script(chunks=["Let me look. ", *chunks], finish_reason="tool_calls"))
    async with (
        served.client() as client,
        client.messages.stream(model="m", max_tokens=100, messages=HI, tools=[WEATHER]) as stream,
    ):
        message = await stream.get_final_message()
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"city": "Oslo"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


async def test_system_prompts_reach_an_openai_format_upstream(served: Served) -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": [{"type": "text", "text": "Environment: linux"}]},
    ]
    body = {
        "model": "m",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": messages,
        "top_k": 5,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{served.url}/v1/messages", json=body) as response,
    ):
        assert response.status == 200
        dropped = response.headers["x-polyroute-dropped"]
    sent = served.openai.requests[0].body["messages"]
    assert sent == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Environment: linux"},
    ]
    assert dropped.split(", ") == ["top_k", "cache_control"]
    assert "top_k" not in served.openai.requests[0].body


async def test_thinking_and_signatures_pass_through_an_anthropic_upstream(
    served: Served,
) -> None:
    served.claude.then(
        Script(
            chunks=[
                {"thinking": "Let me think.", "signature": "c2lnLTE="},
                {"redacted_thinking": "ZW5jcnlwdGVk"},
                {"thinking": "", "signature": "c2lnLTI="},
                "Done.",
            ],
            usage={"cache_read_input_tokens": 7, "cache_creation_input_tokens": 2},
        )
    )
    async with (
        served.client() as client,
        client.messages.stream(
            model="claude-local-large",
            max_tokens=2000,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=HI,
        ) as stream,
    ):
        message = await stream.get_final_message()
    blocks = [block.model_dump(exclude_none=True) for block in message.content]
    assert blocks == [
        {"type": "thinking", "thinking": "Let me think.", "signature": "c2lnLTE="},
        {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"},
        {"type": "thinking", "thinking": "", "signature": "c2lnLTI="},
        {"type": "text", "text": "Done."},
    ]
    assert message.usage.cache_read_input_tokens == 7
    assert message.usage.cache_creation_input_tokens == 2
    assert message.usage.input_tokens == 3


async def test_an_anthropic_upstream_gets_the_request_as_it_was_written(served: Served) -> None:
    """Claude Code's own request (captured from the real binary), with a thinking block
    and its signature in the history: byte-for-byte the same JSON upstream, but the
    model name, with the client's beta header."""
    body = json.loads((FIXTURES / "claude_code_tool_result.json").read_text())
    body["model"] = "claude-local-large"
    thinking = {"type": "thinking", "thinking": "I will run it.", "signature": "c2ln+/="}
    body["messages"][2]["content"].insert(0, thinking)
    written = copy.deepcopy(body)
    headers = json.loads((FIXTURES / "claude_code_headers.json").read_text())
    beta = headers["anthropic-beta"]
    async with aiohttp.ClientSession() as session:
        url = f"{served.url}/v1/messages?beta=true"
        sent_headers = {"anthropic-beta": beta, "anthropic-version": "2023-06-01"}
        async with session.post(url, json=body, headers=sent_headers) as response:
            assert response.status == 200
            assert "x-polyroute-dropped" not in response.headers
            await response.read()
    received = served.claude.requests[0]
    assert received.body == written
    assert received.headers["anthropic-beta"] == beta


async def test_a_relay_mid_answer_is_invisible_to_the_sdk(served: Served) -> None:
    served.openai.then(Script(chunks=["The answer ", "is forty", "-two."], reset_after=2))
    served.backup.then(Script(chunks=["is forty", "-two."]))
    async with (
        served.client() as client,
        client.messages.stream(model="m", max_tokens=100, messages=HI) as stream,
    ):
        message = await stream.get_final_message()
    assert message.content[0].text == "The answer is forty-two."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"


async def test_a_cut_answer_ends_with_an_error_event_and_no_message_stop(served: Served) -> None:
    served.openai.then(Script(chunks=["Hel", "lo"], reset_after=1))
    served.backup.then(Script(status=503, error_body="{}"))
    body = {"model": "m", "max_tokens": 50, "stream": True, "messages": HI}
    events = await _raw_events(served.url, body)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "error"
    assert "message_stop" not in kinds
    assert events[-1][1]["error"]["type"] == "api_error"
    async with served.client() as client:
        served.openai.then(Script(chunks=["Hel", "lo"], reset_after=1))
        served.backup.then(Script(status=503, error_body="{}"))
        with pytest.raises(anthropic.APIStatusError):
            async with client.messages.stream(model="m", max_tokens=50, messages=HI) as stream:
                await stream.get_final_message()


@pytest.mark.parametrize(
    ("scripts", "model", "expected", "status", "kind"),
    [
        ([], "nope", anthropic.NotFoundError, 404, "not_found_error"),
        ([Script(status=500, error_body="{}")] * 2, "m", anthropic.InternalServerError, 502,
         "api_error"),
        ([Script(status=429, error_body="{}")] * 2, "m", anthropic.OverloadedError, 529,
         "overloaded_error"),
    ],
)  # fmt: skip
async def test_failures_before_output_get_their_real_status(
    served: Served,
    scripts: list[Script],
    model: str,
    expected: type[Exception],
    status: int,
    kind: str,
) -> None:
    if scripts:
        served.openai.then(scripts[0])
        served.backup.then(scripts[1])
    async with served.client() as client:
        for stream in (False, True):
            if scripts and stream:
                served.openai.then(scripts[0])
                served.backup.then(scripts[1])
            with pytest.raises(expected) as caught:
                await client.messages.create(model=model, max_tokens=10, messages=HI, stream=stream)
            assert caught.value.status_code == status  # type: ignore[attr-defined]
            assert caught.value.body["error"]["type"] == kind  # type: ignore[attr-defined]


async def test_a_malformed_request_is_an_invalid_request_error(served: Served) -> None:
    async with served.client() as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(
                model="m",
                max_tokens=10,
                messages=[{"role": "robot", "content": "Hi"}],  # type: ignore[typeddict-item]
            )
    assert "messages.0.role" in str(caught.value)
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert served.openai.requests == []


async def test_an_anthropic_upstream_error_is_told_in_anthropic_words(served: Served) -> None:
    served.claude.then(
        Script(status=400, error_body=anthropic_error("invalid_request_error", "bad"))
    )
    async with served.client() as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(model="claude-local-large", max_tokens=10, messages=HI)
    assert caught.value.body["type"] == "error"  # type: ignore[index]


async def _raw_events(url: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/messages", json=body) as response,
    ):
        assert response.status == 200
        assert response.headers["x-request-id"]
        text = (await response.read()).decode()
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_count_tokens_is_exact_from_an_anthropic_entry(served: Served) -> None:
    served.claude.token_count = 17
    served.claude.counted.clear()
    async with served.client() as client:
        raw = await client.messages.with_raw_response.count_tokens(
            model="claude-local-large", system="Be brief.", messages=HI, tools=[WEATHER]
        )
    count = await raw.parse()
    assert count.input_tokens == 17
    assert raw.headers["x-polyroute-token-count"] == "exact"
    sent = served.claude.counted[0]
    assert sent["model"] == "claude-local-large"
    assert sent["system"] == "Be brief."
    assert sent["tools"] == [WEATHER]
    assert "max_tokens" not in sent


async def test_count_tokens_is_estimated_for_other_entries(served: Served) -> None:
    prose = (
        "The lighthouse keeper climbed the spiral stairs every evening, lit the great "
        "lamp, and watched the ships pass safely beyond the rocks until dawn."
    )
    async with served.client() as client:
        raw = await client.messages.with_raw_response.count_tokens(
            model="m", messages=[{"role": "user", "content": prose}]
        )
    count = await raw.parse()
    assert raw.headers["x-polyroute-token-count"] == "estimate"
    assert count.input_tokens == math.ceil(len(prose) / 4.5)  # the documented estimate
    assert served.openai.requests == []  # counting asks no chat upstream


async def test_a_tool_call_cut_midway_is_relayed_whole_never_spliced(served: Served) -> None:
    """With tool_calls: atomic, a call whose upstream dies inside its arguments is asked
    again of the next entry: the client gets one whole tool_use block, from one upstream."""
    first = {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"ci'},
            }
        ]
    }
    rest = {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Rome"}'}}]}
    whole = {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_b",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ]
    }
    served.openai.then(Script(chunks=[first, rest], reset_after=1, finish_reason="tool_calls"))
    served.backup.then(Script(chunks=[whole], finish_reason="tool_calls"))  # fmt: skip
    async with (
        served.client() as client,
        client.messages.stream(model="atomic", max_tokens=50, messages=HI, tools=[WEATHER]) as s,
    ):
        message = await s.get_final_message()
    uses = [block for block in message.content if block.type == "tool_use"]
    assert [(use.id, use.input) for use in uses] == [("call_b", {"city": "Oslo"})]  # type: ignore[union-attr]


async def test_a_body_over_the_limit_is_request_too_large(served: Served) -> None:
    big = [{"role": "user", "content": "x" * 300_000}]
    async with served.client() as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(model="m", max_tokens=5, messages=big)  # type: ignore[arg-type]
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
