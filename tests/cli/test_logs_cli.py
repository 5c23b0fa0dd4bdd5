"""``polyroute logs`` (issue 26, part 1) against a real gateway on SQLite and on a real
PostgreSQL: the store read through ``-c`` and the admin API through ``--url`` give the
same records, line by line or as JSON; ``logs show`` draws the attempts' timeline;
``--follow`` prints a record once it is written."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from tests.server.helpers import ADMIN_KEY
from tests.server.test_gateway_request_log import KEYS, Stage, staged, unique_id
from tests.upstreams.scripted import Script


async def _three_requests(stage: Stage) -> list[str]:
    """A relay, a budget refusal and a clean answer, in that order, once all are logged."""
    relay, refused, clean = unique_id("relay"), unique_id("refused"), unique_id("clean")
    stage.up.then(Script(reset_after=2))
    assert await stage.chat(KEYS["CI_KEY"], relay) == 200
    assert await stage.chat(KEYS["POOR_KEY"], refused) == 429
    assert await stage.chat(KEYS["CI_KEY"], clean) == 200
    for request_id in (relay, refused, clean):
        await stage.record(request_id)
    return [relay, refused, clean]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_the_store_and_the_admin_api_give_the_same_records(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cluster = request.getfixturevalue("postgres_cluster") if backend == "postgres" else None
    async with staged(backend, tmp_path, cluster) as stage:
        relay, refused, clean = await _three_requests(stage)
        env = {**stage.env, "POLYROUTE_ADMIN_KEY": ADMIN_KEY}
        store, api = ("-c", str(stage.config)), ("--url", stage.url)

        async def logs(*args: str) -> str:
            result = await run_cli("logs", *args, cwd=tmp_path, env=env)
            assert result.code == 0, result.err
            return result.out

        # The questions to the store are asked at once (each is a process of its own,
        # reading a store that no longer changes): a dozen interpreters started one after
        # another were most of this test's time. The admin API's are asked one after
        # another, beside them: this test is not about concurrent admin requests.
        from_store = {
            "json": (*store, "--json"),
            "switched": (*store, "--status", "switched"),
            "poor": (*store, "--key", "poor"),
            "since": (*store, "--since", "1h", "--limit", "1"),
            "nowhere": (*store, "--provider", "nowhere"),
            "show": ("show", relay, *store),
            "show json": ("show", relay, *store, "--json"),
        }
        from_api = {
            "api json": (*api, "--json"),
            "api switched": (*api, "--status", "switched"),
            "api show": ("show", relay, *api),
        }

        async def one_by_one() -> list[str]:
            return [await logs(*args) for args in from_api.values()]

        at_once = asyncio.gather(*(logs(*args) for args in from_store.values()))
        store_answers, api_answers = await asyncio.gather(at_once, one_by_one())
        said = dict(zip(from_store, store_answers, strict=True))
        said |= dict(zip(from_api, api_answers, strict=True))

        as_json = said["json"]
        assert as_json == said["api json"]
        records = [json.loads(line) for line in as_json.splitlines()]
        assert [record["id"] for record in records] == [clean, refused, relay]  # newest first
        assert records[2]["attempts"][1]["relay_offset"] == len("Hello, ")

        text = said["switched"]
        assert text == said["api switched"]
        (line,) = text.splitlines()
        assert "switched" in line
        assert "key=ci  m -> backup" in line
        assert line.endswith(f"2 attempts  {relay}")
        (line,) = said["poor"].splitlines()
        assert f"  0 attempts  {refused}  BudgetExceededError: budget exceeded: " in line
        assert "key:poor has $0.000001 left this period" in line
        assert said["since"].endswith(f"{clean}\n")
        assert said["nowhere"] == ""

        shown = said["show"]
        assert shown == said["api show"]
        assert f"id        {relay}" in shown
        assert "status    switched (stop)" in shown
        first, second = shown.split("attempts\n")[1].splitlines()
        assert first.startswith("  1  +0 ms  up (m)  failed  from char 0  ttft ")
        assert first.endswith(
            "  7 chars  UpstreamConnectionError: up: the upstream closed the connection after "
            "7 characters"
        )
        assert second.startswith("  2  +")
        assert second.endswith("  6 chars")  # "world!": what repeated "Hello, " was dropped
        assert "  backup (m)  ok  from char 7  ttft " in second
        assert "model     m\n" in shown  # no alias: nothing resolved to show
        assert json.loads(said["show json"]) == records[2]


async def test_follow_prints_a_record_once_it_is_written(tmp_path: Path) -> None:
    async with staged("sqlite", tmp_path, None) as stage:
        before = unique_id("before")
        assert await stage.chat(KEYS["CI_KEY"], before) == 200
        await stage.record(before)
        environment = {k: v for k, v in os.environ.items() if k != "POLYROUTE_CONFIG"}
        # Started with SIGINT ignored, as a script's background job is: it stops on it
        # all the same (and so whether this suite runs in the foreground or not).
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "polyroute", "logs", "-c", str(stage.config), "--follow",
            "--json", cwd=tmp_path, env={**environment, **stage.env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )  # fmt: skip
        assert process.stdout is not None
        try:
            first = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
            assert first["id"] == before
            after = unique_id("after")
            assert await stage.chat(KEYS["CI_KEY"], after) == 200
            second = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
            assert (second["id"], second["status"]) == (after, "complete")
        finally:
            process.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(process.wait(), 30)
        assert code == 130  # interrupted, as tail -f is


async def test_without_a_store_or_an_admin_key_it_says_what_to_give(tmp_path: Path) -> None:
    config = tmp_path / "no-store.yaml"
    config.write_text("providers: [{name: sim, type: simulated}]\n")
    nothing, no_store, no_key, bad_since = await asyncio.gather(  # independent: at once
        run_cli("logs", cwd=tmp_path),
        run_cli("logs", "-c", str(config), cwd=tmp_path),
        run_cli("logs", "--url", "http://127.0.0.1:9", cwd=tmp_path),
        run_cli("logs", "--since", "yesterday", cwd=tmp_path),
    )
    assert nothing.code == 2
    assert "-c FILE" in nothing.err
    assert "--url URL" in nothing.err
    assert (no_store.code, "has no store: section" in no_store.err) == (2, True)
    assert (no_key.code, "POLYROUTE_ADMIN_KEY is not set" in no_key.err) == (2, True)
    assert bad_since.code == 2
    assert "give a duration (10m, 2h, 7d)" in bad_since.err
