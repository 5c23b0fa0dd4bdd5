"""What the command line says when something fails: the cause of every failure (status
and URL), each entry once, a config mistake in one sentence that says what to write."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.cli.helpers import run_cli, simulated, write_config

NO_WAIT = {"attempts": 2, "backoff_initial": 0}


def always(status: int, name: str = "always503") -> dict[str, object]:
    return simulated(name, ["m"], failures={"status": {status: 1.0}})


async def test_the_one_line_names_status_url_and_attempts_per_entry(tmp_path: Path) -> None:
    config = write_config(tmp_path / "r.yaml", always(503), always(500, "always500"), retry=NO_WAIT)
    result = await run_cli("chat", "-c", str(config), "Hi", cwd=tmp_path)
    assert result.code == 1
    url = r"http://127\.0\.0\.1:\d+/v1/chat/completions"
    assert re.fullmatch(
        rf"polyroute: all providers failed for model 'm': "
        rf"always503 \(2 attempts\): HTTP 503 from {url}: simulated 503; "
        rf"always500 \(2 attempts\): HTTP 500 from {url}: simulated 500; "
        r"-v shows each attempt",
        result.err.splitlines()[-1],
    )


async def test_verbose_prints_the_summary_once_and_counts_in_words(tmp_path: Path) -> None:
    config = write_config(tmp_path / "r.yaml", always(503), retry=NO_WAIT)
    args = ("chat", "-c", str(config), "-v", "--log-format", "console", "Hi")
    result = await run_cli(*args, cwd=tmp_path)
    assert result.code == 1
    lines = result.err.splitlines()
    assert sum("HTTP 503 from" in line for line in lines) == 3  # each attempt, then the sum
    assert re.fullmatch(
        r"failed after 2 attempts: always503 \(2 attempts\): HTTP 503 .*", lines[-2]
    )
    assert lines[-1] == "polyroute: all providers failed for model 'm' (each attempt above)"
    once = write_config(tmp_path / "once.yaml", always(503), retry={"attempts": 1})
    single = await run_cli(*args[:2], str(once), *args[3:], cwd=tmp_path)
    assert "failed after 1 attempt: always503: HTTP 503 from" in single.err
    assert "1 attempts" not in single.err


async def test_chat_json_prints_an_object_on_failure_too(tmp_path: Path) -> None:
    config = write_config(tmp_path / "r.yaml", always(503), retry=NO_WAIT)
    failed = await run_cli("chat", "-c", str(config), "--json", "Hi", cwd=tmp_path)
    assert failed.code == 1
    facts = json.loads(failed.out)
    assert (facts["status"], facts["answer"], facts["provider"]) == ("failed", "", None)
    assert facts["error"]["type"] == "AllProvidersFailed"
    assert "always503 (m, 2 attempts): HTTP 503 from" in facts["error"]["message"]
    assert [a["outcome"] for a in facts["attempts"]] == ["failed", "failed"]
    assert {a["error"]["type"] for a in facts["attempts"]} == {"UpstreamStatusError"}
    assert failed.err.splitlines()[-1].startswith("polyroute: all providers failed")
    unknown = await run_cli("chat", "-c", str(config), "--json", "-m", "nope", "Hi", cwd=tmp_path)
    assert unknown.code == 3
    refused = json.loads(unknown.out)
    assert (refused["status"], refused["attempts"]) == ("failed", [])
    assert refused["error"]["type"] == "ModelNotSupportedError"


async def test_chat_json_lists_each_attempt_and_a_cut_answer(tmp_path: Path) -> None:
    drops = simulated("drops", ["m"], failures={"drop_after": {"rate": 1, "chunks": 2}})
    config = write_config(tmp_path / "r.yaml", always(503), drops, retry={"attempts": 1})
    result = await run_cli("chat", "-c", str(config), "--json", "Hi", cwd=tmp_path)
    assert result.code == 1
    facts = json.loads(result.out)
    assert facts["status"] == "truncated"
    assert facts["answer"].startswith("[simulated drops]")
    first, second = facts["attempts"]
    assert (first["provider"], first["outcome"], first["chars"]) == ("always503", "failed", 0)
    assert (second["provider"], second["chars"]) == ("drops", len(facts["answer"]))
    cut = f"drops: the upstream closed the connection after {second['chars']} characters"
    assert second["error"] == {"type": "UpstreamConnectionError", "message": cut}
    assert facts["error"]["message"] == cut


async def test_providers_check_shows_one_state_per_row(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "r.yaml",
        simulated("good", ["m"]),
        always(503),
        {"name": "off", "type": "darkai"},
        {"name": "keyless", "type": "openai", "api_key_env": "NO_SUCH_KEY_VAR", "models": ["m"]},
        retry=NO_WAIT,
        cooldown={"failures": 2, "seconds": 60},
    )
    result = await run_cli("providers", "-c", str(config), "--check", cwd=tmp_path)
    assert result.code == 1
    header, *lines = result.out.splitlines()[1:]
    assert header.split() == [
        *("NAME", "TYPE", "STREAM", "STATE", "TTFT", "CHARS", "ERRORS", "ENDPOINT", "CHECK")
    ]
    state_at = header.index("STATE")
    states = {line.split()[0]: line[state_at:].split("  ")[0] for line in lines}
    # The check's two failures opened always503's circuit: the row says so, not healthy.
    assert re.fullmatch(r"cooling down \(\d+ s left\)", states["always503"])
    assert states["good"] == "healthy"
    assert states["off"] == "not working"
    assert states["keyless"] == "no key: NO_SUCH_KEY_VAR"


async def test_serve_help_shows_its_defaults(tmp_path: Path) -> None:
    result = await run_cli("serve", "--help", cwd=tmp_path)
    assert result.code == 0
    text = " ".join(result.out.split())
    assert "(default: 127.0.0.1, loopback)" in text
    assert "port to listen on (default: 8000)" in text
    assert "(default: 1)" in text


async def test_a_config_named_by_the_environment_names_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "gone.yaml"
    env = {"POLYROUTE_CONFIG": str(missing)}
    result = await run_cli("chat", "Hi", cwd=tmp_path, env=env)
    assert result.code == 2
    assert result.err.splitlines()[-1] == (
        f"polyroute: POLYROUTE_CONFIG={missing}: cannot read config {missing}: "
        "No such file or directory"
    )
    listed = await run_cli("models", cwd=tmp_path, env=env)
    assert listed.code == 2
    assert "POLYROUTE_CONFIG=" in listed.err


async def test_a_misspelt_provider_type_gets_a_suggestion(tmp_path: Path) -> None:
    config = write_config(tmp_path / "r.yaml", {"name": "a", "type": "opnai"})
    result = await run_cli("chat", "-c", str(config), "Hi", cwd=tmp_path)
    assert result.code == 2
    assert result.err.splitlines()[-1] == (
        "polyroute: providers.0.type: unknown provider 'opnai' (did you mean `openai`?); "
        "known providers: anthropic, darkai, gemini, openai, simulated"
    )


async def test_a_value_of_the_wrong_type_is_one_sentence(tmp_path: Path) -> None:
    config = write_config(tmp_path / "r.yaml", {"name": "a", "type": "openai", "models": "gpt-4o"})
    result = await run_cli("chat", "-c", str(config), "Hi", cwd=tmp_path)
    assert result.code == 2
    assert result.err.splitlines()[-1] == (
        f"polyroute: invalid {config}: providers.0.models: expected a list or 'discover', "
        """got 'gpt-4o' (a list of one is written ["gpt-4o"])"""
    )


async def test_an_endpoint_given_as_base_url_says_what_to_write(tmp_path: Path) -> None:
    url = "http://127.0.0.1:8081/v1/chat/completions"
    config = write_config(tmp_path / "r.yaml", {"name": "a", "type": "openai", "base_url": url})
    result = await run_cli("models", "-c", str(config), cwd=tmp_path)
    assert result.code == 2
    assert result.err.splitlines()[-1] == (
        f"polyroute: invalid {config}: providers.0.base_url: '{url}' ends in the endpoint "
        "path /chat/completions, which the provider adds itself: write base_url: "
        "http://127.0.0.1:8081/v1 (or give the whole URL as api_endpoint)"
    )


async def test_an_undecodable_prompt_is_a_usage_error_not_a_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path / "r.yaml", simulated("a", ["m"]))
    # The byte 0xff in argv reaches Python as the lone surrogate \udcff.
    result = await run_cli("chat", "-c", str(config), "caf\udcff", cwd=tmp_path)
    assert result.code == 2
    assert "Traceback" not in result.err
    assert result.err.splitlines()[-1].startswith(
        r"polyroute: invalid messages: message 0.content: '\udcff' at character 3 is a lone "
        "surrogate"
    )
