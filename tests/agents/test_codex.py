"""The real Codex CLI (``codex exec``, pinned in clients.py) with a model provider whose
base_url is the gateway (``wire_api = "responses"``: it posts to ``/v1/responses``),
finishing a task that needs one exec_command call, routed to an OpenAI-format upstream
and to an Anthropic-format one, offline."""

from __future__ import annotations

import asyncio
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

MODEL = "gpt-5.5"
"""The model of clients.codex_config: a name Codex knows, with the classic request shape."""
PROMPT = f"Run the shell command `echo {MARKER}`, then tell me what it printed."
EXEC = {"cmd": f"echo {MARKER}"}
ANSWER = ["The command ", f"printed {MARKER}", ", as asked."]


async def codex(agents: Path, url: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``codex exec PROMPT`` against ``url``, in a thread: the upstreams answer on this loop."""
    return await asyncio.to_thread(
        clients.run_codex, agents, url, "unused", PROMPT, home, model=MODEL, timeout=AGENT_TIMEOUT
    )


def shell_output(result: str) -> str:
    """The command's own output in an exec_command result: its last line. Codex puts a
    header before it (chunk id, wall time, exit code, ``Output:``)."""
    return result.strip().splitlines()[-1]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_codex_runs_a_tool_through_either_upstream_format(
    agents: Path, upstreams: Upstreams, tmp_path: Path, fmt: Format
) -> None:
    upstream = upstreams.of(fmt)
    upstream.then(tool_call(fmt, "call_exec_1", "exec_command", EXEC), Script(chunks=ANSWER))
    aliases = {MODEL: UPSTREAM_MODEL[fmt]}
    async with serve(tmp_path, [upstreams.entry(fmt)], aliases) as process:
        done = await codex(agents, process.url, tmp_path / "home")
    assert (done.returncode, done.stdout) == (0, "".join(ANSWER) + "\n"), done
    first, second = (request.body for request in upstream.requests)
    assert first["model"] == second["model"] == UPSTREAM_MODEL[fmt]
    assert "exec_command" in offered_tools(fmt, first)
    assert tool_results(fmt, first) == {}
    # The shell really ran: its output went back upstream as the call's result.
    assert shell_output(tool_results(fmt, second)["call_exec_1"]) == MARKER


async def test_a_relay_mid_answer_is_invisible_to_codex(
    agents: Path, upstreams: Upstreams, tmp_path: Path
) -> None:
    # The final answer is cut after "The command printed polyroute-ok": the backup is
    # asked to continue it and repeats the last words, which the gateway drops.
    upstreams.openai.then(
        tool_call("openai", "call_exec_1", "exec_command", EXEC),
        Script(chunks=ANSWER, reset_after=2),
    )
    upstreams.backup.then(Script(chunks=ANSWER[1:]))
    entries = [upstreams.entry("openai"), upstreams.entry("backup")]
    aliases = {MODEL: UPSTREAM_MODEL["openai"]}
    async with serve(tmp_path, entries, aliases, max_relays=2) as process:
        done = await codex(agents, process.url, tmp_path / "home")
    assert (done.returncode, done.stdout) == (0, "".join(ANSWER) + "\n"), done
    assert [request.completed for request in upstreams.openai.requests] == [True, False]
    (continued,) = upstreams.backup.requests
    assert shell_output(tool_results("openai", continued.body)["call_exec_1"]) == MARKER
    partial = {"role": "assistant", "content": "".join(ANSWER[:2])}
    assert partial in continued.body["messages"][-2:]
