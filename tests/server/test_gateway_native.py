"""`polyroute serve` in front of native Anthropic and Gemini upstreams: an OpenAI client
gets their text and tool calls in OpenAI's format, whole and in order."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import openai
import yaml

from tests.server.helpers import gateway
from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.gemini import GeminiUpstream
from tests.upstreams.scripted import Script

HI = [{"role": "user", "content": "Weather in Paris?"}]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]


async def test_an_openai_client_gets_anthropic_and_gemini_answers_in_its_format(
    tmp_path: Path, anthropic_upstream: AnthropicUpstream, gemini_upstream: GeminiUpstream
) -> None:
    call = {"id": "toolu_1", "name": "get_weather", "json": ['{"city": ', '"Paris"}']}
    anthropic_upstream.default = Script(
        chunks=["Looking. ", {"tool_use": call}], finish_reason="tool_calls"
    )
    gemini_upstream.default = Script(chunks=["It is ", "sunny."])
    claude = {"name": "claude", "type": "anthropic", "base_url": anthropic_upstream.base_url}
    gemini = {"name": "gemini", "type": "gemini", "base_url": gemini_upstream.base_url}
    entries = [{**claude, "models": ["claude-x"]}, {**gemini, "models": ["gemini-x"]}]
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"providers": entries}))
    async with gateway(config) as served:
        client = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        stream = await client.chat.completions.create(
            model="claude-x",
            messages=HI,
            tools=TOOLS,
            stream=True,  # type: ignore[arg-type]
        )
        chunks = [chunk async for chunk in stream]
        whole = await client.chat.completions.create(model="gemini-x", messages=HI)  # type: ignore[arg-type]
        await client.close()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    fragments = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    assert text == "Looking. "
    assert (fragments[0].id, fragments[0].function.name) == ("toolu_1", "get_weather")  # type: ignore[union-attr]
    arguments = "".join(f.function.arguments or "" for f in fragments if f.function)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert whole.choices[0].message.content == "It is sunny."
    assert whole.choices[0].finish_reason == "stop"


async def test_an_anthropic_client_gets_gemini_and_darkai_answers_in_its_format(
    tmp_path: Path, gemini_upstream: GeminiUpstream, darkai_upstream: DarkAIUpstream
) -> None:
    """/v1/messages routed to the two other entry types: a Gemini tool call comes back
    as a tool_use block; DarkAI, which takes no options, answers and says what it dropped."""
    gemini_upstream.default = Script(chunks=["It is ", "sunny."])
    gemini = {"name": "gemini", "type": "gemini", "base_url": gemini_upstream.base_url}
    dark = {"name": "dark", "type": "darkai", "api_endpoint": darkai_upstream.url, "working": True}
    entries = [{**gemini, "models": ["gemini-x"]}, {**dark, "models": ["dark-x"]}]
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"providers": entries}))
    async with gateway(config) as served:
        client = anthropic.AsyncAnthropic(base_url=served.url, api_key="unused", max_retries=0)
        async with client.messages.stream(
            model="gemini-x", max_tokens=50, system="Be brief.", messages=HI
        ) as stream:
            from_gemini = await stream.get_final_message()
        raw = await client.messages.with_raw_response.create(
            model="dark-x", max_tokens=50, stop_sequences=["END"], messages=HI
        )
        from_darkai = await raw.parse()
        await client.close()
    assert from_gemini.content[0].text == "It is sunny."  # type: ignore[union-attr]
    assert gemini_upstream.requests[0].body["systemInstruction"]["parts"][0]["text"] == "Be brief."
    assert from_darkai.content[0].type == "text"
    assert from_darkai.stop_reason == "end_turn"
    assert raw.headers["x-polyroute-dropped"] == "max_tokens, stop"
