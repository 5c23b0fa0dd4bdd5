"""``polyroute keys``, ``polyroute teams`` and ``polyroute spend`` against a running
gateway (issue 25, part 3): the real command line, the real ``polyroute serve``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.cli.helpers import Result, run_cli
from tests.server.helpers import ADMIN_KEY, eventually, gateway
from tests.upstreams.openai import OpenAIUpstream


@pytest.fixture
async def url(tmp_path: Path, openai_upstream: OpenAIUpstream) -> AsyncIterator[str]:
    entry = {"name": "up", "type": "openai", "base_url": openai_upstream.base_url,
             "models": ["m"], "price": {"input": 1.0, "output": 2.0}}  # fmt: skip
    config = {
        "providers": [entry],
        "store": {"backend": "sqlite", "path": str(tmp_path / "store.db")},
        "gateway": {"admin_key_env": "ADMIN_KEY"},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    async with gateway(path, env={"ADMIN_KEY": ADMIN_KEY}) as served:
        yield served.url
    assert served.code == 0


async def polyroute(url: str, cwd: Path, *args: str, admin_key: str = ADMIN_KEY) -> Result:
    return await run_cli(*args, "--url", url, cwd=cwd, env={"POLYROUTE_ADMIN_KEY": admin_key})


async def chat(url: str, key: str) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as answer,
    ):
        return answer.status


async def test_keys_and_teams_are_managed_from_the_command_line(url: str, tmp_path: Path) -> None:
    made = await polyroute(url, tmp_path, "teams", "create", "search", "--budget", "5/day",
                           "--rpm", "100", "--json")  # fmt: skip
    assert made.code == 0, made.err
    team = json.loads(made.out)
    assert (team["budget"], team["rpm"]) == ({"usd": 5.0, "period": "day"}, 100)

    created = await polyroute(url, tmp_path, "keys", "create", "ci", "--team", "search",
                              "--model", "m", "--tpm", "100000")  # fmt: skip
    assert created.code == 0, created.err
    lines = dict(line.split(None, 1) for line in created.out.splitlines())
    secret = lines["key"]
    assert secret.startswith("pr-")
    assert created.out.count(secret) == 1  # printed this once, last
    assert created.out.splitlines()[-1] == f"key{' ' * 19}{secret}"
    assert "shown this once" in created.err
    assert (lines["team"], lines["models"], lines["tpm"]) == ("search", "m", "100000")
    assert await chat(url, secret) == 200

    listed, shown, teams = await asyncio.gather(
        polyroute(url, tmp_path, "keys", "list"),
        polyroute(url, tmp_path, "keys", "show", lines["id"]),
        polyroute(url, tmp_path, "teams", "list"),
    )
    assert listed.out.splitlines()[0].split() == [
        "ID", "NAME", "STATUS", "TEAM", "DISPLAY_PREFIX", "RPM", "TPM", "BUDGET"
    ]  # fmt: skip
    assert listed.out.splitlines()[1].split()[:4] == [lines["id"], "ci", "active", "search"]
    assert f"id{' ' * 20}{lines['id']}" in shown.out
    assert secret not in listed.out + shown.out + teams.out
    assert teams.out.splitlines()[1].split() == [team["id"], "search", "100", "-", "5/day"]

    rotated = await polyroute(url, tmp_path, "keys", "rotate", lines["id"], "--json")
    new = json.loads(rotated.out)["key"]
    assert (await chat(url, secret), await chat(url, new)) == (401, 200)
    revoked = await polyroute(url, tmp_path, "keys", "revoke", lines["id"])
    assert revoked.out == f"revoked key {lines['id']} (ci)\n"
    assert await chat(url, new) == 401

    updated = await polyroute(url, tmp_path, "teams", "update", team["id"], "--name", "search-2",
                              "--budget", "none")  # fmt: skip
    assert updated.code == 0, updated.err
    assert "search-2" in updated.out
    deleted = await polyroute(url, tmp_path, "teams", "delete", team["id"])
    assert deleted.out == f"deleted team {team['id']}\n"

    async def spent() -> list[str] | None:
        spend = await polyroute(url, tmp_path, "spend", "--group-by", "key")
        rows = spend.out.splitlines()
        return rows if len(rows) == 2 else None

    rows, _ = await eventually(spent, within=5)
    assert rows[0].split() == ["KEY", "REQUESTS", "INPUT", "OUTPUT", "COST_USD"]
    assert rows[1].split()[:2] == [lines["id"], "2"]


async def test_admin_commands_fail_in_one_line_with_the_documented_codes(
    url: str, tmp_path: Path
) -> None:
    results = await asyncio.gather(
        polyroute(url, tmp_path, "keys", "show", "key_missing"),
        polyroute(url, tmp_path, "keys", "create", "x", "--team", "nobody"),
        polyroute(url, tmp_path, "keys", "list", admin_key=""),
        polyroute(url, tmp_path, "keys", "list", admin_key="pr-wrong-admin-key-0000"),
        polyroute("http://127.0.0.1:1", tmp_path, "teams", "list"),
        polyroute(url, tmp_path, "teams", "update", "team_x"),
        polyroute(url, tmp_path, "spend", "--from", "yesterday"),
        polyroute(url, tmp_path, "keys", "create", "x", "--budget", "5/year"),
    )
    expected = [
        (1, "polyroute: no key with id 'key_missing'"),
        (2, "polyroute: team: no team is named 'nobody'"),
        (2, "polyroute: POLYROUTE_ADMIN_KEY is not set"),
        (2, "polyroute: wrong admin key"),
        (1, "polyroute: cannot reach the gateway at http://127.0.0.1:1"),
        (2, "polyroute: nothing to change"),
        (2, "polyroute: from: 'yesterday' is not an RFC 3339 time"),
        (2, "'5/year': give USD/PERIOD"),
    ]
    for result, (code, message) in zip(results, expected, strict=True):
        assert result.code == code, (message, result.err)
        assert message in result.err
        assert "Traceback" not in result.err
    assert all(len(result.err.splitlines()) == 1 for result in results[:7])
