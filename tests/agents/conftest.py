"""Shared fixtures of the real-agent tests: the pinned agents, scripted upstreams of both wire
formats, and `polyroute serve` in front of them.

The agents are blocking subprocesses, while the upstreams answer on the test's event loop:
run an agent with ``await asyncio.to_thread(...)`` so that the upstreams can answer it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import pytest_asyncio
import yaml

from tests.agents import clients
from tests.server.helpers import Process, gateway
from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script, ScriptedUpstream

Format = Literal["openai", "anthropic"]
FORMATS: tuple[Format, ...] = ("openai", "anthropic")
UPSTREAM_MODEL: dict[Format, str] = {"openai": "m", "anthropic": "claude-local-large"}
"""What the gateway's alias turns the agent's model name into, per upstream format."""

MARKER = "polyroute-ok"
"""What the agents' shell tool prints: it must come back upstream as the tool's result."""

AGENT_TIMEOUT = 60.0
"""Seconds one agent run may take (about 1 s against local servers); a stall fails the test."""


@pytest.fixture(scope="session")
def agents() -> Path:
    """The npm folder holding both pinned agents (installed on first use).

    The one allowed skip: npm absent and nothing installed. npm present but failing
    raises, and the test errors: a broken install must never look like a pass.
    """
    folder = clients.agents_dir()
    if folder is None:
        assert shutil.which("npm") is None  # agents_dir gives None only without npm
        pytest.skip(
            f"npm is not installed: the real agents ({clients.CLAUDE_CODE}, {clients.CODEX}) "
            f"ship on npm; or set ${clients.ENV_DIR} to a folder where they are installed"
        )
    return folder


@dataclass
class Upstreams:
    """Three scripted local upstreams: two OpenAI-format ones (``openai`` first, ``backup``
    after it for the same model) and an Anthropic-format one."""

    openai: OpenAIUpstream
    backup: OpenAIUpstream
    anthropic: AnthropicUpstream

    def of(self, fmt: Format) -> ScriptedUpstream:
        """The first upstream of wire format ``fmt``."""
        return self.openai if fmt == "openai" else self.anthropic

    def entry(self, name: Literal["openai", "backup", "anthropic"]) -> dict[str, Any]:
        """The gateway's config entry for one of the three, named after it."""
        server: OpenAIUpstream | AnthropicUpstream = getattr(self, name)
        fmt: Format = "anthropic" if name == "anthropic" else "openai"
        return {
            "name": name,
            "type": fmt,
            "base_url": server.base_url,
            "models": [UPSTREAM_MODEL[fmt]],
        }


@pytest_asyncio.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    servers = Upstreams(
        await OpenAIUpstream(models=[UPSTREAM_MODEL["openai"]]).start(),
        await OpenAIUpstream(models=[UPSTREAM_MODEL["openai"]]).start(),
        await AnthropicUpstream(models=[UPSTREAM_MODEL["anthropic"]]).start(),
    )
    try:
        yield servers
    finally:
        for server in (servers.openai, servers.backup, servers.anthropic):
            await server.stop()


@asynccontextmanager
async def serve(
    folder: Path,
    entries: list[dict[str, Any]],
    aliases: dict[str, str],
    *,
    env: dict[str, str] | None = None,
    **settings: Any,
) -> AsyncIterator[Process]:
    """The gateway serving ``entries`` with ``aliases``, one attempt per entry (a failure
    moves on at once); checks on the way out that it stopped cleanly: exit 0, no traceback."""
    config = folder / "gateway.yaml"
    data = {"providers": entries, "aliases": aliases, "retry": {"attempts": 1}, **settings}
    config.write_text(yaml.safe_dump(data))
    async with gateway(config, env=env) as process:
        yield process
    log = "\n".join(process.stderr)
    assert process.code == 0, log
    assert "Traceback" not in log, log


def tool_call(fmt: Format, call_id: str, name: str, arguments: dict[str, Any]) -> Script:
    """An answer that is one call of tool ``name``, its JSON arguments streamed in two
    fragments, as ``fmt`` streams them."""
    text = json.dumps(arguments)
    cut = len(text) // 2
    fragments = [text[:cut], text[cut:]]
    if fmt == "anthropic":
        return Script(
            chunks=[{"tool_use": {"id": call_id, "name": name, "json": fragments}}],
            finish_reason="tool_calls",
        )
    function = {"name": name, "arguments": fragments[0]}
    first = {"index": 0, "id": call_id, "type": "function", "function": function}
    rest = {"index": 0, "function": {"arguments": fragments[1]}}
    return Script(
        chunks=[{"tool_calls": [first]}, {"tool_calls": [rest]}], finish_reason="tool_calls"
    )


def offered_tools(fmt: Format, body: dict[str, Any]) -> set[str]:
    """The names of the tools a request to a ``fmt`` upstream offers."""
    tools = body.get("tools") or []
    if fmt == "anthropic":
        return {tool["name"] for tool in tools}
    return {tool["function"]["name"] for tool in tools if tool.get("type") == "function"}


def tool_results(fmt: Format, body: dict[str, Any]) -> dict[str, str]:
    """Tool results in a request to a ``fmt`` upstream: call id -> the result's text.

    OpenAI format: ``role: "tool"`` messages; Anthropic format: ``tool_result`` blocks of
    user turns. Content given as a list of text parts is joined.
    """
    results: dict[str, str] = {}
    for message in body["messages"]:
        if fmt == "openai" and message["role"] == "tool":
            results[message["tool_call_id"]] = _text(message["content"])
        if fmt == "anthropic" and message["role"] == "user":
            for block in message["content"] if isinstance(message["content"], list) else []:
                if block["type"] == "tool_result":
                    results[block["tool_use_id"]] = _text(block.get("content", ""))
    return results


def _text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)
