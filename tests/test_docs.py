"""Code blocks in README.md and docs/ run as written (against `polyroute simulate`, or
with endpoints pointed at local test servers where the output is checked exactly)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from polyroute import Router
from polyroute.router.config import StateConfig
from tests.server.helpers import gateway
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script
from tests.upstreams.server import LocalServer

ROOT = Path(__file__).resolve().parent.parent
Start = Callable[[], Awaitable[DarkAIUpstream]]


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.DOTALL)


def free_port_pair() -> int:
    """A port P with P and P+1 both free just now."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two adjacent free ports")


def local(code: str, *servers: DarkAIUpstream) -> str:
    for port, server in zip((8081, 8082), servers, strict=False):
        code = code.replace(f"http://127.0.0.1:{port}/chat", server.url)
    return code


async def run_python(code: str, cwd: Path | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


@contextlib.asynccontextmanager
async def polyroute_simulate(port: int) -> AsyncIterator[list[list[str]]]:
    """`polyroute simulate --port PORT`, the command the docs give, until the block ends;
    yields its `name format url` lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "polyroute", "simulate", "--port", str(port),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        read = [asyncio.wait_for(process.stdout.readline(), 30) for _ in range(2)]
        yield [(await line).decode().split() for line in read]
    finally:
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_readme_provider_example_streams_from_polyroute_simulate() -> None:
    port = free_port_pair()
    example = next(b for b in blocks(ROOT / "README.md", "python") if "DarkAI(" in b)
    assert "http://127.0.0.1:8081/chat" in example
    async with polyroute_simulate(port) as lines:
        assert [line[:2] for line in lines] == [["dark", "darkai"], ["backup", "darkai"]]
        assert lines[0][2] == f"http://127.0.0.1:{port}/chat"
        output = await run_python(example.replace(":8081/", f":{port}/"))
    assert output.startswith("[simulated dark] ")
    assert len(output.split()) > 10


async def test_readme_router_example_runs_as_pasted() -> None:
    example = next(b for b in blocks(ROOT / "README.md", "python") if "fallbacks" in b)
    lines = (await run_python(example)).splitlines()
    assert lines[0].startswith("[simulated steady] ")
    # flaky answered 503 twice (the default two tries), steady served: what the README says
    assert lines[1] == "[steady, gpt-4o, 3 attempt(s)]"
    assert "`[steady, gpt-4o, 3 attempt(s)]`" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("index", range(len(blocks(ROOT / "docs" / "router.md", "yaml"))))
async def test_router_guide_configs_load_and_route(start_darkai: Start, index: int) -> None:
    first, second = await start_darkai(), await start_darkai()
    text = local(blocks(ROOT / "docs" / "router.md", "yaml")[index], first, second)
    config = yaml.safe_load(text)
    for provider in config["providers"]:
        provider["working"] = True  # the reference block shows one entry left at its class flag
    async with Router.from_config(config) as router:
        model = "cheap" if "cheap" in config.get("aliases", {}) else "gpt-4o"
        answer = await router.complete_text(model, [{"role": "user", "content": "Hi"}])
        assert answer == "Hello, world!"


async def test_router_guide_example_runs_with_the_reference_config(
    start_darkai: Start, tmp_path: Path
) -> None:
    first, second = await start_darkai(), await start_darkai()
    guide = ROOT / "docs" / "router.md"
    reference = local(blocks(guide, "yaml")[0], first, second)
    (tmp_path / "routes.yaml").write_text(reference)
    output = await run_python(blocks(guide, "python")[0], cwd=tmp_path)
    lines = output.splitlines()
    assert lines[0] == "Hello, world!dark"
    assert lines[1] == "gpt-4o"
    assert "provider='dark'" in lines[2]
    assert "outcome='ok'" in lines[2]
    assert lines[3] == "Hello, world!"


def test_readme_quick_start_config_builds_a_router(monkeypatch: pytest.MonkeyPatch) -> None:
    quick_start = next(b for b in blocks(ROOT / "README.md", "yaml") if "default_model" in b)
    for variable in ("ANTHROPIC_API_KEY", "GEMINI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.setenv(variable, "sk-readme-test-0123456789")
    router = Router.from_config(yaml.safe_load(quick_start))
    # Only what a reader with the three keys wants (DarkAI has its own section).
    assert [p.entry_name for p in router.providers] == ["claude", "gemini", "openai"]
    assert router.policy.model_chain("smart") == ["claude-sonnet-4-5", "gemini-2.5-pro", "gpt-4o"]
    assert router.providers[0].api_endpoint == "https://api.anthropic.com/v1/messages"
    assert router.providers[2].api_endpoint == "https://api.openai.com/v1/chat/completions"
    assert router.stream(None, [{"role": "user", "content": "x"}]).requested_model == "smart"


def test_simulator_guide_configs_are_valid() -> None:
    from polyroute.simulator.profile import SimulatedUpstream, SimulatorConfig

    one, entry, servers = (
        yaml.safe_load(b) for b in blocks(ROOT / "docs" / "simulator.md", "yaml")
    )
    assert SimulatedUpstream.model_validate(one).failures.drop_after is not None
    router = Router.from_config(entry)
    assert router.providers[0].type_name == "simulated"
    assert [u.format for u in SimulatorConfig.model_validate(servers).upstreams] == [
        "darkai",
        "openai",
    ]


def test_relay_guide_settings_are_valid_router_settings() -> None:
    from polyroute.router.config import RouterSettings

    snippets = [yaml.safe_load(block) for block in blocks(ROOT / "docs" / "relay.md", "yaml")]
    merged: dict[str, object] = {}
    for snippet in snippets:
        merged.update(snippet)
    settings = RouterSettings.model_validate(merged)
    assert settings.for_model("gpt-4o").order == "adaptive"
    assert settings.for_model("gpt-4o").hedge is not None
    assert settings.for_model("other").hedge is not None  # the top-level hedge applies


async def test_relay_guide_restart_snippet_leaves_only_the_new_answer() -> None:
    from polyroute import StreamRestarted

    (snippet,) = blocks(ROOT / "docs" / "relay.md", "python")
    body = "\n".join("    " + line for line in snippet.splitlines())
    namespace: dict[str, object] = {"StreamRestarted": StreamRestarted}
    exec(f"async def consume(router, messages, collected):\n{body}", namespace)
    latency = {"first_chunk_ms": 0, "chunk_gap_ms": 0}

    def sim(name: str, **failures: object) -> dict[str, object]:
        options = {"words": 8, "latency": latency, "failures": failures}
        return {"name": name, "type": "simulated", "models": ["gpt-4o"], "options": options}

    config = {
        "providers": [sim("a", drop_after={"rate": 1, "chunks": 3}), sim("b")],
        "on_midstream_failure": "restart",
    }
    collected: list[str] = []
    async with Router.from_config(config) as router:
        await namespace["consume"](router, [{"role": "user", "content": "Hi"}], collected)  # type: ignore[operator]
    assert "".join(collected).startswith("[simulated b]")
    assert "[simulated a]" not in "".join(collected)


async def test_provider_guide_example_is_a_working_provider() -> None:
    (example,) = blocks(ROOT / "docs" / "providers.md", "python")
    namespace: dict[str, object] = {}
    exec(compile(example, "docs/providers.md", "exec"), namespace)
    echo = namespace["Echo"]
    events = [
        {"text": "Let me look. "},
        {"call": {"index": 0, "id": "c1", "name": "lookup", "arguments": '{"q": '}},
        {"call": {"index": 0, "arguments": '"sky"}'}},
        {"stop": "tool_calls"},
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)

    async def answer(request: web.Request, _record: object) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body + b"data: [DONE]\n\n")
        return response

    server = await LocalServer(answer).start()
    try:
        provider = echo(api_endpoint=server.url)  # type: ignore[operator]
        assert provider.get_model("echo") == "echo-1"
        tools = [{"type": "function", "function": {"name": "lookup"}}]
        async with Router([provider]) as router:
            message = await router.complete("echo", [{"role": "user", "content": "?"}], tools=tools)
    finally:
        await server.stop()
    assert message.content == "Let me look. "
    assert [call.as_dict() for call in message.tool_calls] == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q": "sky"}'},
        }
    ]
    assert server.requests[0].body["tools"] == tools
    assert len(example.splitlines()) < 60


async def test_router_guide_tool_call_example_runs(
    openai_upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    start = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}
    openai_upstream.default = Script(
        chunks=[
            {"tool_calls": [{**start, "function": {"name": "get_weather", "arguments": ""}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        ],
        finish_reason="tool_calls",
    )
    entry = {"name": "oa", "type": "openai", "base_url": openai_upstream.base_url}
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump({"providers": [entry]}))
    example = next(b for b in blocks(ROOT / "docs" / "router.md", "python") if "tools=" in b)
    output = await run_python(example, cwd=tmp_path)
    assert output.splitlines() == [
        "0 get_weather ",
        '0  {"city": ',
        '0  "Paris"}',
        "call_1 get_weather {'city': 'Paris'}",
        "tool_calls",
    ]
    assert openai_upstream.requests[0].body["tools"][0]["function"]["name"] == "get_weather"


async def test_readme_tool_call_example_runs_as_pasted() -> None:
    example = next(b for b in blocks(ROOT / "README.md", "python") if "tools=" in b)
    output = await run_python(example)
    assert output == 'get_weather {"city": "simulated"}\n'


async def test_router_guide_sync_example_runs(start_darkai: Start, tmp_path: Path) -> None:
    first, second = await start_darkai(), await start_darkai()
    guide = ROOT / "docs" / "router.md"
    (tmp_path / "routes.yaml").write_text(local(blocks(guide, "yaml")[0], first, second))
    example = next(b for b in blocks(guide, "python") if "SyncRouter" in b)
    output = await run_python(example, cwd=tmp_path)
    assert output.splitlines() == ["Hello, world!dark complete", "Hello, world!"]


async def test_readme_tour_python_runs_as_pasted() -> None:
    tour = next(b for b in blocks(ROOT / "README.md", "python") if "SyncRouter" in b)
    lines = (await run_python(tour)).splitlines()
    assert lines[0].startswith("[simulated sim] ")
    assert lines[1] == "(sim, 1 attempt)"
    assert lines[2] == lines[0]  # the sync router: the same answer to the same conversation


async def test_readme_tour_commands_run_as_pasted(tmp_path: Path) -> None:
    """Each command of the tour, in a directory with no config (the built-in default);
    the activated venv is this interpreter's bin on PATH, and the backgrounded gateway
    is one started the same way on a free port (its line is skipped, `kill %1` too)."""
    tour = next(b for b in blocks(ROOT / "README.md", "bash") if "polyroute serve &" in b)
    commands = [line.split("  # ")[0].strip() for line in tour.replace("\\\n", " ").splitlines()]
    assert commands[0] == ". .venv/bin/activate"
    assert commands[-1] == "kill %1"
    env = {k: v for k, v in os.environ.items() if k != "POLYROUTE_CONFIG"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    run = [command for command in commands[1:-1] if command != "polyroute serve &"]

    async def shell(command: str, url: str) -> str:
        process = await asyncio.create_subprocess_shell(
            command.replace("http://127.0.0.1:8000", url),
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        # The built-in sim-flaky fails on purpose, and --check says so with exit 1.
        expected = 1 if command == "polyroute providers --check" else 0
        assert process.returncode == expected, (command, err.decode())
        return out.decode()

    # No command of the tour reads what another left (the chat commands start their own
    # simulated upstreams): they run at once, each an interpreter of its own.
    async with gateway(None) as served:
        said = await asyncio.gather(*(shell(command, served.url) for command in run))
    outputs = {command.split()[1]: out for command, out in zip(run, said, strict=True)}
    assert json.loads(outputs["chat"].splitlines()[-1])["provider"] == "sim-steady"
    assert "sim-large" in outputs["models"]
    checks = {line.split()[0]: line for line in outputs["providers"].splitlines()[2:]}
    assert re.search(r"failed: HTTP 503 from http://\S+: simulated 503", checks["sim-flaky"])
    assert " ok " in checks["sim-steady"]
    assert outputs["-sN"].rstrip().endswith("data: [DONE]")


async def test_shared_state_guide_config_routes_on_a_real_redis(
    start_darkai: Start, redis_url: str
) -> None:
    first, second = await start_darkai(), await start_darkai()
    (block,) = blocks(ROOT / "docs" / "shared-state.md", "yaml")
    config = yaml.safe_load(local(block, first, second).replace(StateConfig().url, redis_url))
    async with Router.from_config(config) as router:
        answer = await router.complete_text("gpt-4o", [{"role": "user", "content": "Hi"}])
        assert answer == "Hello, world!"
        assert router.state.describe_backend().endswith("(shared)")


def test_agents_guide_config_is_valid() -> None:
    from polyroute import load_config

    (block,) = blocks(ROOT / "docs" / "agents.md", "yaml")
    config = load_config(yaml.safe_load(block))
    assert [key.key_env for key in config.gateway.keys] == ["POLYROUTE_KEY"]
    router = Router.from_config(config)
    chains = {
        name: router.policy.model_chain(name)
        for name in ("claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5", "gpt-5.5")
    }
    assert chains == {
        "claude-opus-5-5": ["claude-sonnet-4-5"],
        "claude-sonnet-5-5": ["claude-sonnet-4-5"],
        "claude-haiku-5-5": ["gpt-4o-mini"],
        "gpt-5.5": ["gpt-4o"],
    }


async def test_agents_guide_sdk_examples_run_against_a_default_gateway() -> None:
    """docs/agents.md's anthropic and openai SDK blocks, as written, against `polyroute
    serve` with no config (on a free port instead of 8000)."""
    examples = blocks(ROOT / "docs" / "agents.md", "python")
    assert len(examples) == 2
    async with gateway(None) as served:  # the two examples are independent: at once
        outputs = await asyncio.gather(
            *(run_python(code.replace("http://127.0.0.1:8000", served.url)) for code in examples)
        )
    messages, responses = (output.splitlines() for output in outputs)
    assert messages[-1].endswith(" end_turn")
    assert "[simulated" in messages[0]
    assert responses[-1] == "completed"
    assert "[simulated" in responses[0]


async def test_embeddings_guide_example_runs_against_a_local_openai_server(
    openai_upstream: OpenAIUpstream,
) -> None:
    (example,) = blocks(ROOT / "docs" / "embeddings.md", "python")
    key = '"api_key_env": "OPENAI_API_KEY"'
    assert key in example
    out = await run_python(example.replace(key, f'"base_url": "{openai_upstream.base_url}"'))
    assert out.startswith("2 256 openai Usage(prompt_tokens=4")
    (snippet,) = blocks(ROOT / "docs" / "embeddings.md", "yaml")
    from polyroute.router.config import RouterSettings

    settings = RouterSettings.model_validate(yaml.safe_load(snippet))
    assert settings.embedding_fallbacks == {
        "text-embedding-3-large": ["text-embedding-3-large-azure"]
    }


async def test_governance_guide_cost_example_runs_against_a_local_openai_server(
    openai_upstream: OpenAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    (example,) = blocks(ROOT / "docs" / "governance.md", "python")
    key = '"api_key_env": "OPENAI_API_KEY"'
    assert key in example
    out = await run_python(example.replace(key, f'"base_url": "{openai_upstream.base_url}"'))
    assert out.startswith("Hello, world!\nexact: $0.00000")  # gpt-4o-mini's catalogue price
    snippet = blocks(ROOT / "docs" / "governance.md", "yaml")[0]
    config = yaml.safe_load(snippet)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "unused")
    router = Router.from_config(config)
    entries = router.policy.by_name
    assert entries["local-vllm"].price_for("qwen3-32b") is not None
    claude = entries["claude"].price_for("claude-sonnet-4-5")
    assert claude is not None
    assert (claude.input, claude.cache_write) == (3, 3.75)


def test_governance_guide_budget_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from polyroute.router.config import GatewayConfig
    from polyroute.server.keys import KeyRing

    snippet = blocks(ROOT / "docs" / "governance.md", "yaml")[1]
    config = GatewayConfig.model_validate(yaml.safe_load(snippet)["gateway"])
    monkeypatch.setenv("CI_GATEWAY_KEY", "pr-ci-0123456789")
    monkeypatch.setenv("SEARCH_GATEWAY_KEY", "pr-search-0123456789")
    ring = KeyRing(config.keys, config.teams, config.budget_hold_s)
    ci, search = ring.keys
    assert ci.budget is not None
    assert ci.budget.default_max_tokens == 2048
    assert search.budget is not None
    assert set(search.budget.limits) == {"team:search"}
    assert search.team_rpm == 600


def test_governance_guide_store_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from polyroute import load_config

    snippet = blocks(ROOT / "docs" / "governance.md", "yaml")[2]
    config = load_config({"providers": [{"name": "sim", "type": "simulated"}],
                          **yaml.safe_load(snippet)})  # fmt: skip
    assert config.store is not None
    assert (config.store.backend, config.store.dsn_env) == ("postgres", "POLYROUTE_STORE_DSN")
    assert config.gateway.admin_key_env == "POLYROUTE_ADMIN_KEY"
    assert config.state.backend == "redis"


async def _shell_lines(
    block: str, env: dict[str, str], learn: Callable[[str, str], dict[str, str]]
) -> None:
    """Each command of ``block`` in a shell, in order (``VAR=value`` lines set ``env``);
    ``learn(command, output)`` gives variables for the commands after it."""
    for line in block.splitlines():
        command = line.split("  # ")[0].strip()
        if not command:
            continue
        if re.fullmatch(r"[A-Z_]+=.*", command):
            name, value = command.split("=", 1)
            done = await asyncio.create_subprocess_shell(
                f"printf %s {value}", env=env, stdout=asyncio.subprocess.PIPE
            )
            env[name] = (await done.communicate())[0].decode()
            continue
        process = await asyncio.create_subprocess_shell(
            command,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, (command, err.decode())
        env.update(learn(command, out.decode()))


async def test_governance_guide_admin_examples_run_against_a_gateway(tmp_path: Path) -> None:
    """The curl calls, then the command-line examples, of docs/governance.md as written,
    against a gateway with a SQLite store (on a free port instead of 8000)."""
    curl, cli = (b for b in blocks(ROOT / "docs" / "governance.md", "bash"))
    admin_key = "pr-docs-admin-key-0123456789"
    config = {
        "providers": [{"name": "sim", "type": "simulated", "models": ["gpt-4o-mini"]}],
        "store": {"backend": "sqlite", "path": str(tmp_path / "store.db")},
        "gateway": {"admin_key_env": "POLYROUTE_ADMIN_KEY"},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "POLYROUTE_CONFIG"}
    env["POLYROUTE_ADMIN_KEY"] = admin_key
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    answers: list[dict[str, Any]] = []

    def learn_json(command: str, out: str) -> dict[str, str]:
        answer = json.loads(out)
        answers.append(answer)
        assert "error" not in answer, (command, answer)
        if "/admin/teams -H" in command and "-d" in command and "-X" not in command:
            return {"TEAM_ID": answer["id"]}
        if "/admin/keys -H" in command and "-d" in command:
            return {"KEY_ID": answer["id"]}
        return {}

    def learn_lines(command: str, out: str) -> dict[str, str]:
        fields = dict(line.split(None, 1) for line in out.splitlines() if " " in line)
        return {"KEY_ID": fields["id"]} if command.startswith("polyroute keys create") else {}

    async with gateway(path, env={"POLYROUTE_ADMIN_KEY": admin_key}) as served:
        await _shell_lines(curl.replace("http://127.0.0.1:8000", served.url), env, learn_json)
        await _shell_lines(cli.replace("\n", f" --url {served.url}\n"), env, learn_lines)
    assert served.code == 0
    created = answers[1]
    assert created["key"].startswith("pr-")
    assert answers[2]["data"][0]["name"] == "ci"  # the list: never a secret
    assert "key" not in answers[2]["data"][0]
    assert answers[4]["tpm"] == 100000
    assert answers[5]["previous_valid_until"] is not None
    assert answers[6]["status"] == "revoked"
    assert answers[-1] == {"id": answers[0]["id"], "object": "team", "deleted": True}
