"""`polyroute serve` in front of native Anthropic and Gemini upstreams: an OpenAI client
gets their text and tool calls in OpenAI's format, whole and in order."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import yaml

from tests.server.helpers import gateway
from tests.upstreams.anthropic import AnthropicUpstream
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
