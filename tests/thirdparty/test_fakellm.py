"""Routing through an OpenAI-compatible server we did not write: fakellm (pinned in the
test extra), a mock LLM server from PyPI that needs no model weights. It streams text
and tool calls with its own encoder, so our reading of the format is checked against
an independent writer of it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from polyroute import Router, ToolCallDelta
from tests.server.helpers import free_port

pytestmark = [pytest.mark.thirdparty, pytest.mark.asyncio(loop_scope="module")]

RULES = {
    "rules": [
        {
            "name": "weather",
            "when": {"messages_contain": "weather"},
            "respond": {
                "tool_calls": [
                    {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
                    {"name": "get_time", "arguments": {"zone": "Europe/Paris"}},
                ]
            },
        },
        {"name": "hello", "respond": {"content": "Hello from an independent server."}},
    ]
}
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time")
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fakellm(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A fakellm process on a free loopback port; yields its base URL once it listens."""
    config = tmp_path_factory.mktemp("fakellm") / "fakellm.yaml"
    config.write_text(yaml.safe_dump(RULES))
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from fakellm.cli import main; main()",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--config",
        str(config),
        cwd=Path(config).parent,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        # uvicorn says so on stderr once the socket accepts connections.
        while b"Uvicorn running on" not in (
            line := await asyncio.wait_for(process.stderr.readline(), 60)
        ):
            assert line, "fakellm exited before it listened"
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        await process.wait()


def entries(base_url: str) -> list[dict[str, object]]:
    dead = {"name": "dead", "type": "openai", "base_url": "http://127.0.0.1:9/v1"}
    fake = {"name": "fakellm", "type": "openai", "base_url": base_url, "models": ["fake-model"]}
    return [{**dead, "models": ["fake-model"]}, fake]


async def test_text_streams_through_it_after_a_dead_entry(fakellm: str) -> None:
    config = {"providers": entries(fakellm), "retry": {"attempts": 1}}
    async with Router.from_config(config) as router:
        stream = router.stream("fake-model", [{"role": "user", "content": "Hi"}])
        pieces = [text async for text in stream]
    assert "".join(pieces) == "Hello from an independent server."
    assert len(pieces) > 1
    assert (stream.provider, stream.status, stream.finish_reason) == (
        "fakellm",
        "complete",
        "stop",
    )
    assert [a.outcome for a in stream.attempts] == ["failed", "ok"]


@pytest.mark.parametrize("mode", ["stream", "atomic"])
async def test_parallel_tool_calls_stream_through_it(fakellm: str, mode: str) -> None:
    config = {"providers": entries(fakellm), "retry": {"attempts": 1}, "tool_calls": mode}
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    async with (
        Router.from_config(config) as router,
        router.stream("fake-model", question, tools=TOOLS) as stream,
    ):
        deltas = [delta async for delta in stream.deltas()]
    calls = stream.message.tool_calls
    assert [call.name for call in calls] == ["get_weather", "get_time"]
    assert calls[0].parsed_arguments() == {"city": "Paris", "unit": "celsius"}
    assert calls[1].parsed_arguments() == {"zone": "Europe/Paris"}
    assert all(call.id.startswith("call_") for call in calls)
    assert stream.finish_reason == "tool_calls"
    fragments = sum(isinstance(delta, ToolCallDelta) for delta in deltas)
    assert fragments == 2 if mode == "atomic" else fragments > 2
