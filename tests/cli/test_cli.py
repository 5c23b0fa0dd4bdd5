"""The polyroute command, run as users run it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
from pathlib import Path

from polyroute.providers import DarkAI, OpenAI
from tests.cli.helpers import run_cli, simulated, start_simulate, write_config
from tests.server.helpers import send_signal
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

HI = [{"role": "user", "content": "Hi"}]


def events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


async def test_chat_on_the_builtin_default_streams_and_shows_retry_and_fallback(
    tmp_path: Path,
) -> None:
    result = await run_cli("chat", "-v", "--log-format", "json", "Hello", cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.out.startswith("[simulated sim-steady] ")
    assert result.out.endswith("\n")
    assert "config: built-in default" in result.err
    names = [event["event"] for event in events(result.err)]
    assert names.count("attempt.retry") == 1
    assert "route.next_provider" in names  # sim-flaky -> sim-steady, both sim-large
    assert names[-1] == "route.done"


async def test_chat_reads_the_prompt_from_stdin_and_sends_the_system_message(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "r.yaml", simulated("only", ["m"], format="openai"))
    with_system = await run_cli(
        "chat", "-c", str(config), "--system", "Be brief.", cwd=tmp_path, stdin="Hi"
    )
    without = await run_cli("chat", "-c", str(config), cwd=tmp_path, stdin="Hi")
    assert with_system.code == without.code == 0
    assert with_system.out.startswith("[simulated only]")
    # The simulated text depends on the whole conversation: the system message changed it.
    assert with_system.out != without.out
    assert f"config: {config} (from -c)" in with_system.err


async def test_no_prompt_is_a_usage_error(tmp_path: Path) -> None:
    result = await run_cli("chat", cwd=tmp_path, stdin="")
    assert result.code == 2
    assert "no prompt" in result.err


async def test_unknown_model_exits_3_with_one_line(tmp_path: Path) -> None:
    result = await run_cli("chat", "-m", "nope", "Hi", cwd=tmp_path)
    assert result.code == 3
    error_lines = [
        line for line in result.err.splitlines() if not line.startswith("polyroute: config")
    ]
    assert error_lines == [
        "polyroute: model 'nope' is not supported by this router; "
        "valid models: fast, sim-large, sim-small"
    ]


async def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("providers:\n  - {name: a, type: darkai, priorty: 1}\n")
    result = await run_cli("chat", "-c", str(config), "Hi", cwd=tmp_path)
    assert result.code == 2
    assert "providers.0.priorty" in result.err
    assert "Traceback" not in result.err
    debug = await run_cli("--debug", "chat", "-c", str(config), "Hi", cwd=tmp_path)
    assert debug.code == 2
    assert "Traceback" in debug.err
    assert debug.err.splitlines()[-1] == result.err.splitlines()[-1]


async def test_all_failed_exits_1_with_one_line_and_debug_shows_the_traceback(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "r.yaml",
        simulated("down", ["m"], failures={"status": {503: 1.0}}),
        retry={"attempts": 1},
    )
    result = await run_cli("chat", "-c", str(config), "Hi", cwd=tmp_path)
    assert result.code == 1
    assert re.fullmatch(
        r"polyroute: all providers failed for model 'm': down: HTTP 503 from "
        r"http://127\.0\.0\.1:\d+/v1/chat/completions: simulated 503; -v shows each attempt",
        result.err.splitlines()[-1],
    )
    assert "Traceback" not in result.err
    debug = await run_cli("--debug", "chat", "-c", str(config), "Hi", cwd=tmp_path)
    assert debug.code == 1
    assert "Traceback" in debug.err
    assert "AllProvidersFailed" in debug.err


async def test_answer_breaking_off_exits_1_after_the_partial_text(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "r.yaml",
        simulated("drops", ["m"], failures={"drop_after": {"rate": 1, "chunks": 2}}),
    )
    result = await run_cli("chat", "-c", str(config), "Hi", cwd=tmp_path)
    assert result.code == 1
    assert result.out.startswith("[simulated drops]")
    assert result.out.endswith("\n")
    assert "UpstreamConnectionError" not in result.out
    delivered = len(result.out.removesuffix("\n"))
    assert result.err.splitlines()[-1] == (
        f"polyroute: drops: the upstream closed the connection after {delivered} characters"
    )


async def test_config_search_order(tmp_path: Path) -> None:
    local = write_config(tmp_path / "polyroute.yaml", simulated("local", ["m"]))
    from_env = write_config(tmp_path / "env.yaml", simulated("env", ["m"]))
    flag = write_config(tmp_path / "flag.yaml", simulated("flag", ["m"]))
    env = {"POLYROUTE_CONFIG": str(from_env)}
    assert (await run_cli("chat", "Hi", cwd=tmp_path)).out.startswith("[simulated local]")
    assert (await run_cli("chat", "Hi", cwd=tmp_path, env=env)).out.startswith("[simulated env]")
    chosen = await run_cli("chat", "-c", str(flag), "Hi", cwd=tmp_path, env=env)
    assert chosen.out.startswith("[simulated flag]")
    assert local.exists()


async def test_models_lists_providers_aliases_and_fallbacks(tmp_path: Path) -> None:
    result = await run_cli("models", cwd=tmp_path)
    assert result.code == 0
    lines = result.out.splitlines()
    assert "sim-large  sim-flaky, sim-steady" in lines
    assert "fast   sim-small" in lines
    assert "sim-large  sim-small" in lines


async def test_providers_check_probes_each_entry(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "r.yaml",
        simulated("good", ["m"]),
        simulated("bad", ["m"], failures={"status": {500: 1.0}}),
        {"name": "off", "type": "darkai"},
    )
    result = await run_cli("providers", "-c", str(config), "--check", cwd=tmp_path)
    assert result.code == 1  # a failed check fails the command, for use in CI
    rows = {line.split()[0]: line for line in result.out.splitlines()[2:]}
    assert "ok " in rows["good"]
    assert re.search(
        r"failed: HTTP 500 from http://127\.0\.0\.1:\d+/v1/chat/completions", rows["bad"]
    )
    header = result.out.splitlines()[1].split()
    good = dict(zip(header, rows["good"].split(), strict=False))
    bad = dict(zip(header, rows["bad"].split(), strict=False))
    assert good["TTFT"].endswith("ms")
    assert good["ERRORS"] == "0%"
    assert (bad["TTFT"], bad["ERRORS"]) == ("-", "100%")
    assert "skipped (not working)" in rows["off"]
    # One state per row: the check's outcome and the flags agree with it.
    assert (good["STATE"], bad["STATE"]) == ("healthy", "failing")
    assert rows["off"].split()[1:5] == ["darkai", "yes", "not", "working"]


async def test_simulate_serves_real_upstreams_until_interrupted(tmp_path: Path) -> None:
    sim = tmp_path / "sim.yaml"
    sim.write_text(
        "upstreams:\n"
        "  - {name: a, format: darkai, words: 3, latency: {first_chunk_ms: 0, chunk_gap_ms: 0}}\n"
        "  - {name: b, format: openai, words: 3, latency: {first_chunk_ms: 0, chunk_gap_ms: 0}}\n"
    )
    process = await start_simulate(sim)
    assert process.stdout is not None
    lines = [
        (await asyncio.wait_for(process.stdout.readline(), 30)).decode().split() for _ in range(2)
    ]
    assert [line[:2] for line in lines] == [["a", "darkai"], ["b", "openai"]]
    async with (
        DarkAI(api_endpoint=lines[0][2]) as dark,
        OpenAI(base_url=lines[1][2], models=[]) as oa,  # an openai upstream's base_url
    ):
        dark_text = "".join([t async for t in dark.create_async_generator("gpt-4o", HI)])
        oa_text = "".join([t async for t in oa.create_async_generator("x", HI)])
    assert dark_text.startswith("[simulated a]")
    assert oa_text.startswith("[simulated b]")
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_simulate_asked_to_stop_again_and_again_still_exits_0(tmp_path: Path) -> None:
    # A supervisor that repeats SIGTERM while the simulator stops: once its servers
    # stopped, the default action must not come back (it killed it: exit -15).
    sim = tmp_path / "sim.yaml"
    sim.write_text("upstreams:\n  - {name: a, format: openai, words: 3}\n")
    process = await start_simulate(sim, stderr=asyncio.subprocess.DEVNULL)
    assert process.stdout is not None
    assert (await asyncio.wait_for(process.stdout.readline(), 30)).startswith(b"a\t")
    while process.returncode is None:
        send_signal(process, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 0.002)
    assert process.returncode == 0


async def test_providers_check_probes_a_model_the_entry_lists(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    listed = {"name": "oa", "type": "openai", "base_url": openai_upstream.base_url}
    config = write_config(tmp_path / "r.yaml", {**listed, "models": ["local-small", "m"]})
    result = await run_cli("providers", "-c", str(config), "--check", cwd=tmp_path)
    assert result.code == 0, result.err
    (request,) = openai_upstream.requests
    assert request.body["model"] == "local-small"
    assert re.search(r"ok local-small: first chunk \d+ ms, total \d+ ms", result.out)


async def test_providers_check_reports_a_failed_discovery(
    tmp_path: Path, darkai_upstream: DarkAIUpstream
) -> None:
    darkai_upstream.default = Script(status=404, error_body="no such route")
    base = darkai_upstream.url.removesuffix("/chat") + "/v1"
    entry = {"name": "oa", "type": "openai", "base_url": base, "models": "discover"}
    config = write_config(tmp_path / "r.yaml", entry)
    result = await run_cli("providers", "-c", str(config), "--check", cwd=tmp_path)
    assert f"failed: model discovery: oa: HTTP 404 from {base}/models: no such route" in result.out
    assert "discovery failed" in result.out  # its state
    assert [r.method for r in darkai_upstream.requests] == ["GET"]


async def test_every_upstream_saying_no_such_model_exits_3(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    body = '{"error": {"message": "The model `m` does not exist.", "code": "model_not_found"}}'
    openai_upstream.default = Script(status=404, error_body=body)
    entry = {"name": "oa", "type": "openai", "base_url": openai_upstream.base_url}
    config = write_config(tmp_path / "r.yaml", entry)
    result = await run_cli("chat", "-c", str(config), "-m", "m", "Hi", cwd=tmp_path)
    assert result.code == 3
    assert "oa: model 'm' is not supported by provider 'oa'" in result.err


async def test_version_and_common_options_before_or_after_the_command(tmp_path: Path) -> None:
    config = write_config(tmp_path / "r.yaml", simulated("only", ["m"]))
    chats = (
        ["-c", str(config), "-v", "--log-format", "json", "chat", "Hi"],
        ["chat", "-c", str(config), "-v", "--log-format", "json", "Hi"],
        ["-c", str(config), "chat", "-v", "--log-format", "json", "Hi"],
    )
    listings = (
        ["--debug", "models", "-c", str(config)],
        ["models", "--debug", "-c", str(config)],
    )
    # Independent runs, each an interpreter of its own: at once.
    version, *results = await asyncio.gather(
        run_cli("--version", cwd=tmp_path),
        *(run_cli(*args, cwd=tmp_path) for args in (*chats, *listings)),
    )
    assert (version.code, version.out.strip()) == (0, "polyroute 0.1.0")
    for args, result in zip(chats, results, strict=False):
        assert result.code == 0, (args, result.err)
        assert result.out.startswith("[simulated only]")
        events = [json.loads(line) for line in result.err.splitlines() if line.startswith("{")]
        assert "route.done" in [event["event"] for event in events]
    assert [result.code for result in results[len(chats) :]] == [0] * len(listings)


async def test_a_missing_key_skips_one_entry_not_the_run(tmp_path: Path) -> None:
    paid = {
        "name": "openai",
        "type": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key_env": "OPENAI_API_KEY",
        "models": ["gpt-4o"],
    }
    config = write_config(tmp_path / "r.yaml", paid, simulated("local", ["llama3.1"]))
    env = {"OPENAI_API_KEY": ""}
    chat, listed, entries, refused = await asyncio.gather(  # independent runs: at once
        run_cli("chat", "-c", str(config), "-m", "llama3.1", "Hi", cwd=tmp_path, env=env),
        run_cli("models", "-c", str(config), cwd=tmp_path, env=env),
        run_cli("providers", "-c", str(config), "--check", cwd=tmp_path, env=env),
        run_cli("chat", "-c", str(config), "-m", "gpt-4o", "Hi", cwd=tmp_path, env=env),
    )
    assert chat.code == 0, chat.err
    assert chat.out.startswith("[simulated local]")
    assert "gpt-4o    openai (no key: OPENAI_API_KEY)" in listed.out
    assert "no key: OPENAI_API_KEY" in entries.out
    assert "skipped (no key: OPENAI_API_KEY)" in entries.out
    assert entries.code == 0
    assert refused.code == 1
    assert "no key: OPENAI_API_KEY is not set" in refused.err


async def test_a_closed_port_says_the_url_and_connection_refused_once_per_entry(
    tmp_path: Path,
) -> None:
    dead = [
        {"name": name, "type": "darkai", "api_endpoint": url, "working": True, "models": ["m1"]}
        for name, url in (("dead", "http://127.0.0.1:9/chat"), ("gone", "http://127.0.0.1:7/chat"))
    ]
    config = write_config(tmp_path / "r.yaml", *dead, retry={"attempts": 2, "backoff_initial": 0})
    result = await run_cli(
        "chat", "-c", str(config), "-m", "m1", "-v", "--log-format", "json", "Hi", cwd=tmp_path
    )
    assert result.code == 1
    failed = events(result.err)[-1]
    assert failed["event"] == "route.failed"
    assert failed["reasons"] == [
        "dead (2 attempts): cannot connect to http://127.0.0.1:9/chat: connection refused",
        "gone (2 attempts): cannot connect to http://127.0.0.1:7/chat: connection refused",
    ]
    # -v has just said it all: the last line does not say it again.
    assert result.err.splitlines()[-1] == (
        "polyroute: all providers failed for model 'm1' (each attempt above)"
    )
    quiet = await run_cli("chat", "-c", str(config), "-m", "m1", "Hi", cwd=tmp_path)
    assert quiet.err.splitlines()[-1] == (
        "polyroute: all providers failed for model 'm1': "
        "dead (2 attempts): cannot connect to http://127.0.0.1:9/chat: connection refused; "
        "gone (2 attempts): cannot connect to http://127.0.0.1:7/chat: connection refused; "
        "-v shows each attempt"
    )
    assert "ssl:default" not in result.err + quiet.err


async def test_chat_json_options_and_no_stream(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    entry = {"name": "oa", "type": "openai", "base_url": openai_upstream.base_url}
    config = write_config(tmp_path / "r.yaml", entry)
    args = ["chat", "-c", str(config), "-m", "local-large", "-o", "temperature", "0.2"]
    args += ["-o", "stop", '["\\n"]', "-o", "top_k", "5", "--max-tokens", "40", "--json", "Hi"]
    result = await run_cli(*args, cwd=tmp_path)
    assert result.code == 0, result.err
    facts = json.loads(result.out)
    assert facts["answer"] == "Hello, world!"
    assert (facts["provider"], facts["model"], facts["error"]) == ("oa", "local-large", None)
    (attempt,) = facts["attempts"]
    assert (attempt["provider"], attempt["outcome"], attempt["chars"]) == ("oa", "ok", 13)
    assert facts["usage"]["total_tokens"] == 7
    assert (facts["finish_reason"], facts["status"]) == ("stop", "complete")
    body = openai_upstream.requests[0].body
    assert (body["temperature"], body["stop"], body["top_k"], body["max_tokens"]) == (
        0.2,
        ["\n"],
        5,
        40,
    )
    whole = await run_cli(
        "chat", "-c", str(config), "--no-stream", "-v", "-m", "local-large", "Hi", cwd=tmp_path
    )
    assert whole.out == "Hello, world!\n"
    done = [json.loads(line) for line in whole.err.splitlines() if '"route.done"' in line]
    assert (done[0]["prompt_tokens"], done[0]["completion_tokens"]) == (3, 4)
    bad = await run_cli("chat", "-c", str(config), "-o", "temperature", '"hot"', "Hi", cwd=tmp_path)
    assert bad.code == 2
    assert "temperature" in bad.err


async def test_simulate_port_without_room_for_every_upstream_is_a_config_error(
    tmp_path: Path,
) -> None:
    result = await run_cli("simulate", "--port", "65535", cwd=tmp_path)
    assert result.code == 2
    assert "--port 65535: no room for 2 ports" in result.err


async def test_config_errors_keep_their_caret_and_name_the_right_command(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("providers:\n  - name: a\n    type: [openai\n")
    (tmp_path / "sim.yaml").write_text("upstreams:\n  - {name: a}\n")
    router_file = write_config(tmp_path / "routes.yaml", simulated("a", ["m"]))
    broken, simulator_file, wrong = await asyncio.gather(  # independent runs: at once
        run_cli("chat", "-c", "r.yaml", "Hi", cwd=tmp_path),
        run_cli("chat", "-c", "sim.yaml", "Hi", cwd=tmp_path),
        run_cli("simulate", "-c", str(router_file), cwd=tmp_path),
    )
    assert broken.code == 2
    assert broken.err.splitlines()[-3:] == [
        "polyroute: r.yaml:3:11: while parsing a flow sequence: expected ',' or ']', "
        "but got '<stream end>'",
        "      type: [openai",
        "            ^",
    ]
    assert simulator_file.code == 2
    assert "sim.yaml is a simulator file (upstreams:)" in simulator_file.err
    assert "`polyroute simulate -c sim.yaml`" in simulator_file.err
    assert wrong.code == 2
    assert "is a router config (providers:), not a simulator file" in wrong.err


async def test_models_shows_a_failed_discovery(
    tmp_path: Path, darkai_upstream: DarkAIUpstream
) -> None:
    darkai_upstream.default = Script(status=404, error_body="no such route")
    base = darkai_upstream.url.removesuffix("/chat") + "/v1"
    entry = {"name": "oa", "type": "openai", "base_url": base, "models": "discover"}
    result = await run_cli(
        "models", "-c", str(write_config(tmp_path / "r.yaml", entry)), cwd=tmp_path
    )
    assert result.code == 0, result.err
    row = result.out.splitlines()[-1].split(None, 1)
    assert row[0] == "oa"
    assert row[1].startswith(f"discovery failed: oa: HTTP 404 from {base}/models: no such route")
    assert "(any other name)  oa" in result.out


async def test_providers_check_goes_through_the_attempt_engine(tmp_path: Path) -> None:
    """--check is a routed request for one entry: retried per `retry`, and logged in
    the routing events (-v), like any other."""
    config = write_config(
        tmp_path / "r.yaml", simulated("bad", ["m"], failures={"status": {500: 1.0}})
    )
    result = await run_cli("-v", "providers", "-c", str(config), "--check", cwd=tmp_path)
    assert result.code == 1
    assert result.err.count("attempt.start") == 2  # the default two tries per entry
    assert "attempt.retry" in result.err
