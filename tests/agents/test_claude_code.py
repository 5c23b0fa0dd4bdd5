"""The real Claude Code CLI (``claude -p``, pinned in clients.py) with ANTHROPIC_BASE_URL at
the gateway's ``/v1/messages``, finishing a task that needs one Bash call, routed to an
OpenAI-format upstream and to an Anthropic-format one, offline."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from tests.agents import clients
from tests.agents.conftest import (
    AGENT_TIMEOUT,
    FORMATS,
    MARKER,
    UPSTREAM_MODEL,
    Format,
    Upstreams,
    offered_tools,
    serve,
    tool_call,
    tool_results,
)
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.agents

MODEL = "claude-opus-5-5"
"""Claude Code's default model: the name its requests carry."""
PROMPT = f"Run `echo {MARKER}` with the Bash tool and tell me what it printed."
BASH = {"command": f"echo {MARKER}", "description": "print a marker"}
ANSWER = ["The command ", f"printed {MARKER}", ", as asked."]
JSON = ("--output-format", "stream-json", "--verbose")
"""Claude Code's JSON-lines output: the last line is the result, with the API's status."""


async def claude(
    agents: Path,
    url: str,
    home: Path,
    *,
    key: str = "unused",
    bearer: bool = False,
    args: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """``claude -p PROMPT`` against ``url``, in a thread: the upstreams answer on this loop."""
    return await asyncio.to_thread(
        clients.run_claude,
        agents,
        url,
        key,
        PROMPT,
        home,
        bearer=bearer,
        args=args,
        timeout=AGENT_TIMEOUT,
    )


@pytest.mark.parametrize("fmt", FORMATS)
async def test_claude_code_runs_a_tool_through_either_upstream_format(
    agents: Path, upstreams: Upstreams, tmp_path: Path, fmt: Format
) -> None:
    upstream = upstreams.of(fmt)
    upstream.then(tool_call(fmt, "call_bash_1", "Bash", BASH), Script(chunks=ANSWER))
    aliases = {MODEL: UPSTREAM_MODEL[fmt]}
    async with serve(tmp_path, [upstreams.entry(fmt)], aliases) as process:
        done = await claude(agents, process.url, tmp_path / "home")
    assert (done.returncode, done.stdout) == (0, "".join(ANSWER) + "\n"), done
    first, second = (request.body for request in upstream.requests)
    assert first["model"] == second["model"] == UPSTREAM_MODEL[fmt]
    assert "Bash" in offered_tools(fmt, first)
    assert tool_results(fmt, first) == {}
    # The shell really ran: its output went back upstream as the call's result.
    assert tool_results(fmt, second)["call_bash_1"].strip() == MARKER


async def test_a_relay_mid_answer_is_invisible_to_claude_code(
    agents: Path, upstreams: Upstreams, tmp_path: Path
) -> None:
    # The final answer is cut after "The command printed polyroute-ok": the backup is
    # asked to continue it and repeats the last words, which the gateway drops.
    upstreams.openai.then(
        tool_call("openai", "call_bash_1", "Bash", BASH), Script(chunks=ANSWER, reset_after=2)
    )
    upstreams.backup.then(Script(chunks=ANSWER[1:]))
    entries = [upstreams.entry("openai"), upstreams.entry("backup")]
    aliases = {MODEL: UPSTREAM_MODEL["openai"]}
    async with serve(tmp_path, entries, aliases, max_relays=2) as process:
        done = await claude(agents, process.url, tmp_path / "home")
    assert (done.returncode, done.stdout) == (0, "".join(ANSWER) + "\n"), done
    assert [request.completed for request in upstreams.openai.requests] == [True, False]
    (continued,) = upstreams.backup.requests
    assert tool_results("openai", continued.body)["call_bash_1"].strip() == MARKER
    partial = {"role": "assistant", "content": "".join(ANSWER[:2])}
    assert partial in continued.body["messages"][-2:]


@pytest.mark.parametrize("bearer", [False, True], ids=["x-api-key", "bearer"])
async def test_claude_code_passes_the_gateways_key_check(
    agents: Path, upstreams: Upstreams, tmp_path: Path, bearer: bool
) -> None:
    """ANTHROPIC_API_KEY (``x-api-key``) and ANTHROPIC_AUTH_TOKEN (``Authorization:
    Bearer``) both reach a gateway with keys; a wrong key gets the gateway's 401."""
    upstreams.openai.then(Script(chunks=["Hi there."]))
    keys = {"keys": [{"name": "ci", "key_env": "GW_KEY"}]}
    env = {"GW_KEY": "sk-gateway-ci"}
    entries = [upstreams.entry("openai")]
    aliases = {MODEL: UPSTREAM_MODEL["openai"]}
    async with serve(tmp_path, entries, aliases, env=env, gateway=keys) as process:
        done = await claude(
            agents, process.url, tmp_path / "home", key="sk-gateway-ci", bearer=bearer
        )
        refused = await claude(
            agents, process.url, tmp_path / "other", key="sk-wrong", bearer=bearer, args=JSON
        )
    assert (done.returncode, done.stdout) == (0, "Hi there.\n"), done
    assert refused.returncode == 1, refused
    result = json.loads(refused.stdout.splitlines()[-1])
    assert (result["api_error_status"], result["api_error_type"]) == (
        401,
        "authentication_error",
    ), result
    assert len(upstreams.openai.requests) == 1
