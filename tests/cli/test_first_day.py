"""The first day with the gateway, at the command line: a busy port is one sentence and
exit 2 with no worker left behind; `serve --workers` says where it listens as one
gateway does; `--help` shows the defaults; `-v` tells a fallback to another model."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from polyroute.core.console import HumanRenderer
from polyroute.simulator.profile import Latency, SimulatedUpstream
from polyroute.simulator.server import SimulatorServer
from tests.cli.helpers import Result, run_cli, simulated, write_config
from tests.server.helpers import free_port
from tests.test_docs import ROOT, blocks


@contextmanager
def busy_port() -> Iterator[int]:
    """A loopback port another process's socket listens on (this one's, here)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def group_members(group: int) -> list[int]:
    """The live processes of process group ``group`` (zombies left out: whoever reaps
    them, they run nothing)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended while we looked
            continue
        state, _parent, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == group and state != "Z":
            members.append(int(entry.name))
    return members


async def run_alone(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
    """`polyroute ARGS` in a process group of its own, which must be empty once it has
    exited: no worker it started outlives it."""
    environment = {k: v for k, v in os.environ.items() if k != "POLYROUTE_CONFIG"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "polyroute",
        *args,
        cwd=cwd,
        env={**environment, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    assert group_members(process.pid) == [], "a process of the command outlived it"
    return Result(process.returncode, out.decode(), err.decode())


def the_one_error(result: Result) -> str:
    """The error line, after checking it is the only thing said besides which config."""
    lines = [line for line in result.err.splitlines() if not line.startswith("polyroute: config:")]
    assert "Traceback" not in result.err
    assert len(lines) == 1, result.err
    return lines[0]


# A busy port -------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "two_workers"])
async def test_serve_on_a_busy_port_says_so_in_one_line_and_exits_2(
    tmp_path: Path, workers: list[str]
) -> None:
    with busy_port() as port:
        result = await run_alone("serve", "--port", str(port), *workers, cwd=tmp_path)
    assert result.code == 2
    assert the_one_error(result) == f"polyroute: port {port} on 127.0.0.1 is in use; pass --port N"


async def test_simulate_on_a_busy_port_names_that_port(tmp_path: Path) -> None:
    with busy_port() as port:  # the second upstream's: the first one has started by then
        sim = tmp_path / "sim.yaml"
        sim.write_text(f"upstreams:\n  - {{name: a, port: 0}}\n  - {{name: b, port: {port}}}\n")
        result = await run_alone("simulate", "-c", str(sim), cwd=tmp_path)
    assert result.code == 2
    assert the_one_error(result) == f"polyroute: port {port} on 127.0.0.1 is in use; pass --port N"
    assert result.out == ""  # no upstream was announced: none serves


async def test_workers_that_fail_before_listening_say_it_once_and_leave_nothing(
    tmp_path: Path,
) -> None:
    # The parent reads the file; only a worker builds the gateway, and finds no key.
    config = write_config(
        tmp_path / "r.yaml",
        simulated("a", ["m"]),
        gateway={"keys": [{"name": "ci", "key_env": "FIRST_DAY_UNSET_KEY"}]},
    )
    result = await run_alone(
        "serve", "-c", str(config), "--port", str(free_port()), "--workers", "2", cwd=tmp_path
    )
    assert result.code == 2
    assert the_one_error(result) == (
        "polyroute: gateway key 'ci': environment variable FIRST_DAY_UNSET_KEY (key_env) is not set"
    )


# Workers say where they listen --------------------------------------------------------


async def test_workers_say_their_url_as_one_gateway_does_and_stop_together(
    tmp_path: Path,
) -> None:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k != "POLYROUTE_CONFIG"}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "polyroute", "serve", "--port", str(port), "--workers", "2"),
        cwd=tmp_path,
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stderr is not None
    head = f"polyroute: serving on http://127.0.0.1:{port} with 2 workers ("
    try:
        while b"serving on" not in (line := await asyncio.wait_for(process.stderr.readline(), 60)):
            assert line, "polyroute serve --workers 2 exited before it listened"
        said = line.decode().rstrip("\n")
        assert said.startswith(head), said
        pids = [int(pid) for pid in said.removeprefix(head).rstrip(")").split(", ")]
        # The group holds the parent and the workers it named: the check below sees them.
        assert sorted(group_members(process.pid)) == sorted([process.pid, *pids])
    finally:
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 60)
        code = await asyncio.wait_for(process.wait(), 60)
    assert code == 0, rest.decode()
    assert group_members(process.pid) == []


# --help -----------------------------------------------------------------------------


async def test_serve_help_shows_every_default(tmp_path: Path) -> None:
    result = await run_cli("serve", "--help", cwd=tmp_path)
    assert result.code == 0
    text = " ".join(result.out.split())  # argparse wraps to the terminal's width
    for default in (
        "(default: 127.0.0.1, loopback)",
        "(default: 8000)",
        "(default: 1)",
        "(default: off)",
        "(default: $POLYROUTE_CONFIG, else ./polyroute.yaml, else the built-in",
        "(default: auto, text on a terminal)",
    ):
        assert default in text


async def test_simulate_help_says_its_config_is_a_simulator_file(tmp_path: Path) -> None:
    result = await run_cli("simulate", "--help", cwd=tmp_path)
    text = " ".join(result.out.split())
    assert "a simulator config, upstreams: [...] (default: the docs' two examples)" in text
    assert "POLYROUTE_CONFIG" not in text


# -v tells every step ----------------------------------------------------------------


async def test_a_fallback_with_no_entry_of_the_first_model_tried_is_told(tmp_path: Path) -> None:
    # What a reader with an OpenAI key only sees: the first model's entry has no key.
    config = tmp_path / "r.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "default_model": "smart",
                "providers": [
                    {
                        "name": "claude",
                        "type": "anthropic",
                        "api_key_env": "FIRST_DAY_NO_ANTHROPIC_KEY",
                        "models": ["claude-sonnet-4-5"],
                    },
                    simulated("openai", ["gpt-4o"]),
                ],
                "aliases": {"smart": "claude-sonnet-4-5"},
                "fallbacks": {"claude-sonnet-4-5": ["gpt-4o"]},
            }
        )
    )
    human = await run_cli(
        "chat", "-v", "--log-format", "console", "-c", str(config), "Hi", cwd=tmp_path
    )
    assert human.code == 0, human.err
    lines = human.err.splitlines()
    assert (
        "smart = claude-sonnet-4-5: no provider can serve it; skipped claude "
        "(claude-sonnet-4-5): no key: FIRST_DAY_NO_ANTHROPIC_KEY is not set; then model gpt-4o"
    ) in lines
    assert (
        "-> fallback model gpt-4o on openai (no provider of claude-sonnet-4-5 could be tried)"
    ) in lines
    machine = await run_cli(
        "chat", "-v", "--log-format", "json", "-c", str(config), "Hi", cwd=tmp_path
    )
    events = [json.loads(line) for line in machine.err.splitlines() if line.startswith("{")]
    (fallback,) = [event for event in events if event["event"] == "route.fallback"]
    assert fallback["from_provider"] is None
    assert (fallback["from_model"], fallback["to_model"]) == ("claude-sonnet-4-5", "gpt-4o")


async def test_the_readmes_quick_start_tells_what_its_v_example_shows(tmp_path: Path) -> None:
    quick_start = next(b for b in blocks(ROOT / "README.md", "yaml") if "default_model" in b)
    (shown,) = [b for b in blocks(ROOT / "README.md", "text") if "-> fallback model" in b]
    # The OpenAI entry, the one key set, answered by a local stand-in at its base_url.
    instant = Latency(first_chunk_ms=0, chunk_gap_ms=0)
    upstream = SimulatedUpstream(name="openai", format="openai", latency=instant)
    server = await SimulatorServer(upstream).start()
    try:
        config = yaml.safe_load(quick_start)
        (entry,) = [e for e in config["providers"] if e["name"] == "openai"]
        entry["base_url"] = server.config_url
        (tmp_path / "polyroute.yaml").write_text(yaml.safe_dump(config))
        keys = {"ANTHROPIC_API_KEY": "", "GEMINI_API_KEY": "", "OPENAI_API_KEY": "sk-first-day"}
        result = await run_cli(
            "chat", "-v", "--log-format", "console", "Why is the sky blue?", cwd=tmp_path, env=keys
        )
    finally:
        await server.stop()
    assert result.code == 0, result.err
    said = [line for line in result.err.splitlines() if not line.startswith("polyroute: ")]
    expected = shown.strip().splitlines()
    assert said[:3] == expected[:3]  # which entries, why skipped, the fallback: word for word
    timing = [
        r"openai  first chunk in \d+ ms",
        r"done \d+ chars, 1 attempt, \d+ ms, \d+\+\d+ tokens \(openai\)",
    ]
    for pattern, line, readme_line in zip(timing, said[3:], expected[3:], strict=True):
        assert re.fullmatch(pattern, line), line
        assert re.fullmatch(pattern, readme_line), readme_line


def test_every_step_of_the_router_reads_as_a_short_line() -> None:
    plain = HumanRenderer(colors=False)

    def line(event: str, **fields: object) -> str:
        return plain(None, "info", {"event": event, "level": "info", **fields})

    assert line("route.skip", provider="a", model="m", reason="cooling down") == (
        "a  not tried: cooling down"
    )
    assert line("retry.budget_exhausted", provider="a", model="m", attempts=3) == (
        "a  not tried: retry budget exhausted"
    )
    assert line("cache.hit", model="m", provider="a") == "cache hit (a)"
    assert line("route.excluded", model="m2", candidates=["b"], excluded=["c (m2): x"]) == (
        "m2: b; skipped c (m2): x"
    )
    hand_over = {"from_model": "m", "to_model": "m2", "to_provider": "b"}
    assert line("route.fallback", from_provider="a", **hand_over) == "-> fallback model m2 on b"
