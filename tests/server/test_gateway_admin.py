"""The admin API of a real ``polyroute serve`` on a SQLite store (issue 25, parts 3, 5
and 7): every endpoint and its errors, keys made at runtime beside the config's, their
expiry, rotation grace, budget and tokens per minute, the spend ledger, and no secret in
the log or in any answer but the one that made it."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from polyroute.store import hash_secret
from tests.cli.helpers import run_cli
from tests.server.helpers import ADMIN_KEY, admin, eventually, gateway
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONFIG_KEY = "gw-config-key-7e3c1a9b5d"
USAGE = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
COST = (1000 * 2.0 + 200 * 8.0) / 1e6  # $0.0036 at the entry's price
HI = [{"role": "user", "content": "Hi"}]


@dataclass
class Served:
    url: str
    upstream: OpenAIUpstream
    session: aiohttp.ClientSession
    secrets: list[str] = field(default_factory=list)
    """Every secret the admin API handed out: none may appear in the log."""
    answers: list[str] = field(default_factory=list)
    """Every admin answer that is not a key's creation or rotation."""

    async def admin(self, method: str, path: str, body: Any = None, **options: Any) -> Any:
        status, answer = await admin(self.session, self.url, method, path, body, **options)
        if isinstance(answer, dict) and "key" in answer and status in (200, 201):
            self.secrets.append(answer["key"])
        else:
            self.answers.append(json.dumps(answer))
        return status, answer

    async def key(self, name: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        """A new key's secret and record."""
        status, record = await self.admin("POST", "/admin/keys", {"name": name, **fields})
        assert status == 201, record
        return record.pop("key"), record

    async def chat(self, key: str, model: str = "m", **body: Any) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {key}"}
        payload = {"model": model, "messages": HI, "max_tokens": 500, **body}
        async with self.session.post(
            f"{self.url}/v1/chat/completions", json=payload, headers=headers
        ) as answer:
            if body.get("stream"):
                return answer.status, answer.headers, await answer.text()
            return answer.status, answer.headers, await answer.json()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    upstream = await OpenAIUpstream().start()
    upstream.default = Script(usage=USAGE)
    folder = tmp_path_factory.mktemp("admin")
    config = {
        "providers": [
            {"name": "priced", "type": "openai", "base_url": upstream.base_url,
             "models": ["m", "other", "text-embedding-3-small"],
             "price": {"input": 2.0, "output": 8.0}},
        ],
        "store": {"backend": "sqlite", "path": str(folder / "store.db")},
        "gateway": {
            "admin_key_env": "ADMIN_KEY",
            "keys": [{"name": "cfg", "key_env": "CFG_KEY"}],
        },
    }  # fmt: skip
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"ADMIN_KEY": ADMIN_KEY, "CFG_KEY": CONFIG_KEY}
    try:
        async with (
            aiohttp.ClientSession() as session,
            gateway(path, "-v", "--log-format", "json", env=env) as process,
        ):
            served = Served(process.url, upstream, session)
            yield served
    finally:
        await upstream.stop()
    assert process.code == 0
    log = "\n".join(process.stderr)
    assert '"event": "gateway.request"' in log
    for secret in [ADMIN_KEY, CONFIG_KEY, *served.secrets]:
        assert secret not in log
    for answer in served.answers:  # no secret, no hash of one, in any other answer
        for secret in served.secrets:
            assert secret not in answer
            assert hash_secret(secret) not in answer
        assert "secret_hash" not in answer


async def test_only_the_admin_key_opens_the_admin_api(served: Served) -> None:
    secret, _ = await served.key("opener")
    headers = {"Cookie": f"admin={ADMIN_KEY}", "x-api-key": ADMIN_KEY}
    async with served.session.get(f"{served.url}/admin/keys", headers=headers) as answer:
        assert answer.status == 401  # never a cookie, never x-api-key
    refusals = {
        "none": await served.admin("GET", "/admin/keys", key=None),
        "wrong": await served.admin("GET", "/admin/keys", key="pr-admin-test-0123456789abcdeX"),
        "config key": await served.admin("GET", "/admin/teams", key=CONFIG_KEY),
        "store key": await served.admin("POST", "/admin/keys", {"name": "x"}, key=secret),
    }
    statuses = {who: status for who, (status, _) in refusals.items()}
    assert statuses == {"none": 401, "wrong": 401, "config key": 403, "store key": 403}
    for _, body in refusals.values():
        assert set(body["error"]) == {"message", "type", "param", "code"}  # OpenAI's shape
    status, reloaded = await served.admin("POST", "/admin/reload")
    assert (status, reloaded["changed"]) == (200, False)  # the same file, re-read


async def test_keys_are_made_used_listed_changed_and_revoked(served: Served) -> None:
    status, team = await served.admin("POST", "/admin/teams", {"name": "search", "rpm": 600})
    assert status == 201
    assert team["id"].startswith("team_")
    secret, key = await served.key("ci", team="search", models=["m"], metadata={"owner": "qa"})
    assert secret.startswith("pr-")
    assert len(secret) > 40
    assert key["team"] == "search"
    assert key["team_id"] == team["id"]
    assert key["display_prefix"] == secret[:10]
    assert (key["status"], key["models"], key["metadata"]) == ("active", ["m"], {"owner": "qa"})
    status, headers, answer = await served.chat(secret)
    assert status == 200, answer
    assert headers["x-polyroute-cost-usd"] == "0.0036"
    assert (await served.chat(CONFIG_KEY))[0] == 200  # the config's keys work alongside
    assert (await served.chat(secret, model="other"))[0] == 403

    status, listed = await served.admin("GET", "/admin/keys")
    assert status == 200
    assert key["id"] in [item["id"] for item in listed["data"]]
    assert all("key" not in item for item in listed["data"])
    status, shown = await served.admin("GET", f"/admin/keys/{key['id']}")
    assert shown == key
    status, changed = await served.admin(
        "PATCH", f"/admin/keys/{key['id']}", {"models": None, "rpm": 100, "team": None}
    )
    assert status == 200
    assert (changed["models"], changed["rpm"], changed["team"]) == (None, 100, None)
    assert (await served.chat(secret, model="other"))[0] == 200  # applied at once

    status, revoked = await served.admin("DELETE", f"/admin/keys/{key['id']}")
    assert (status, revoked["status"]) == (200, "revoked")
    assert (await served.chat(secret))[0] == 401  # at once, on the gateway that revoked it
    _, listed = await served.admin("GET", "/admin/keys")
    assert key["id"] not in [item["id"] for item in listed["data"]]
    _, listed = await served.admin("GET", "/admin/keys?include_revoked=true")
    assert key["id"] in [item["id"] for item in listed["data"]]

    status, renamed = await served.admin(
        "PATCH",
        f"/admin/teams/{team['id']}",
        {"name": "search-2", "budget": {"usd": 3, "period": "week"}},
    )
    assert status == 200
    assert (renamed["name"], renamed["budget"]) == ("search-2", {"usd": 3, "period": "week"})
    assert (await served.admin("GET", f"/admin/teams/{team['id']}"))[1] == renamed
    _, teams = await served.admin("GET", "/admin/teams")
    assert renamed in teams["data"]
    status, deleted = await served.admin("DELETE", f"/admin/teams/{team['id']}")
    assert (status, deleted) == (200, {"id": team["id"], "object": "team", "deleted": True})


async def test_bad_requests_get_clear_errors(served: Served) -> None:
    _, team = await served.admin("POST", "/admin/teams", {"name": "errors"})
    _, key = await served.key("dup", team="errors")
    missing = "key_000000000000000000000000"
    cases: list[tuple[str, str, Any, int, str]] = [
        ("GET", f"/admin/keys/{missing}", None, 404, "no key with id"),
        ("PATCH", f"/admin/keys/{missing}", {"rpm": 5}, 404, "no key with id"),
        ("DELETE", f"/admin/keys/{missing}", None, 404, "no key with id"),
        ("POST", f"/admin/keys/{missing}/rotate", {}, 404, "no key with id"),
        ("GET", "/admin/teams/team_missing", None, 404, "no team with id"),
        ("DELETE", "/admin/teams/team_missing", None, 404, "no team with id"),
        ("POST", "/admin/keys", {"name": "dup"}, 409, "an active key named 'dup'"),
        ("POST", "/admin/teams", {"name": "errors"}, 409, "a team named 'errors'"),
        ("DELETE", f"/admin/teams/{team['id']}", None, 409, "1 active key"),
        ("POST", "/admin/keys", b"{not json", 400, "the body is not JSON"),
        ("POST", "/admin/keys", {"name": "x", "rmp": 5}, 400,
         "rmp: unknown key (did you mean `rpm`?)"),
        ("POST", "/admin/keys", {"name": "x", "rpm": "5"}, 400,
         "rpm: Input should be a valid integer"),
        ("POST", "/admin/keys", {"name": "x", "tpm": 0}, 400, "tpm: Input should be greater than"),
        ("POST", "/admin/keys", {"rpm": 5}, 400, "name: Field required"),
        ("POST", "/admin/keys", {"name": "x", "budget": {"usd": 1, "period": "year"}}, 400,
         "budget.period"),
        ("POST", "/admin/keys", {"name": "x", "expires_at": "2030-01-01T00:00:00"}, 400,
         "expires_at: Input should have timezone info"),
        ("POST", "/admin/keys", {"name": "x", "team": "nobody"}, 400, "no team is named 'nobody'"),
        ("PATCH", f"/admin/teams/{team['id']}", {"name": None}, 400, "name"),
        ("POST", f"/admin/keys/{key['id']}/rotate", {"grace_s": -1}, 400, "grace_s"),
        ("GET", "/admin/spend?group_by=colour", None, 400, "group_by: must be one of"),
        ("GET", "/admin/spend?from=yesterday", None, 400, "from: 'yesterday' is not"),
        ("PUT", "/admin/keys", {}, 405, "Method Not Allowed"),
        ("GET", "/admin/nothing", None, 404, "Not Found"),
    ]  # fmt: skip
    for method, path, body, status, message in cases:
        got, answer = await served.admin(method, path, body)
        assert got == status, (method, path, answer)
        assert message in answer["error"]["message"], (method, path, answer)
        assert answer["error"]["type"] == "invalid_request_error"
    await served.admin("DELETE", f"/admin/keys/{key['id']}")
    got, answer = await served.admin("POST", f"/admin/keys/{key['id']}/rotate")
    assert (got, answer["error"]["code"]) == (409, "conflict")  # a revoked key


async def test_a_rotated_key_keeps_its_old_secret_for_the_grace(served: Served) -> None:
    old, key = await served.key("rotating")
    status, rotated = await served.admin("POST", f"/admin/keys/{key['id']}/rotate", {"grace_s": 1})
    assert status == 200
    new = rotated["key"]
    assert new != old
    assert rotated["previous_valid_until"] is not None
    assert [(await served.chat(secret))[0] for secret in (old, new)] == [200, 200]

    async def old_refused() -> bool:
        return (await served.chat(old))[0] == 401

    _, waited = await eventually(old_refused, within=5)
    assert 0.3 < waited < 2  # the grace, to the clock
    assert (await served.chat(new))[0] == 200
    _, again = await served.admin("POST", f"/admin/keys/{key['id']}/rotate")  # grace 0
    assert (await served.chat(new))[0] == 401
    assert (await served.chat(again["key"]))[0] == 200


async def test_an_expired_key_gets_401(served: Served) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=1)
    secret, key = await served.key("short-lived", expires_at=expires.isoformat())
    assert key["expires_at"] == expires.isoformat().replace("+00:00", "Z")
    assert (await served.chat(secret))[0] == 200

    async def refused() -> bool:
        return (await served.chat(secret))[0] == 401

    await eventually(refused, within=5)
    assert datetime.now(UTC) >= expires
    assert (await served.admin("GET", f"/admin/keys/{key['id']}"))[1]["status"] == "expired"


async def test_a_store_key_is_held_to_its_budget_and_its_tokens_per_minute(
    served: Served,
) -> None:
    budgeted, key = await served.key("budgeted", budget={"usd": 0.01, "period": "day"})
    answers = [await served.chat(budgeted) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 429, 429]  # 2 x 0.0036 + 0.004
    assert answers[2][2]["error"]["code"] == "budget_exceeded"
    assert f"key:{key['id']}" in answers[2][2]["error"]["message"]
    assert float(answers[1][1]["x-polyroute-budget-remaining-usd"]) >= 0
    limited, _ = await served.key("limited", tpm=1500)
    statuses = [(await served.chat(limited))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]  # 1200 tokens, then 2400: over 1500 a minute
    _status, _, answer = await served.chat(limited)
    assert "over its 1500 tokens per minute" in answer["error"]["message"]
    async with served.session.get(f"{served.url}/metrics") as metrics:
        text = await metrics.text()
    assert "polyroute_ledger_dropped_total 0.0" in text
    gauge = re.search(rf'polyroute_budget_remaining_usd{{scope="key:{key["id"]}"}} (\S+)', text)
    assert gauge is not None
    assert 0 <= float(gauge.group(1)) <= 0.01 - 2 * COST + 1e-9


async def test_every_request_reaches_the_spend_ledger_within_seconds(served: Served) -> None:
    secret, key = await served.key("ledgered")
    assert (await served.chat(secret))[0] == 200
    status, _, events = await served.chat(secret, stream=True)
    assert status == 200
    assert events.rstrip().endswith("data: [DONE]")
    body = {"model": "text-embedding-3-small", "input": ["a", "b"]}
    async with served.session.post(
        f"{served.url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {secret}"}
    ) as answer:
        assert answer.status == 200
    # A client that goes away mid-answer: the upstream bills what it made, so it counts.
    served.upstream.then(Script(chunks=["a"] * 50, stall_after=3, usage=USAGE))
    payload = {"model": "m", "messages": HI, "stream": True}
    async with served.session.post(
        f"{served.url}/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {secret}"},
    ) as answer:
        await answer.content.readany()

    async def four_requests() -> dict[str, Any] | None:
        _, spend = await served.admin("GET", "/admin/spend?group_by=key")
        row = next((row for row in spend["data"] if row["group"] == key["id"]), None)
        return row if row is not None and row["requests"] == 4 else None

    row, _ = await eventually(four_requests, within=5)
    assert row["input_tokens"] >= 2 * 1000
    assert row["cost_usd"] > 2 * COST
    for group_by in ("team", "model", "provider", "day"):
        status, spend = await served.admin("GET", f"/admin/spend?group_by={group_by}")
        assert status == 200, group_by
        assert spend["data"], group_by
    today = datetime.now(UTC).date()
    _, days = await served.admin("GET", f"/admin/spend?group_by=day&from={today}")
    assert [row["group"] for row in days["data"]] == [today.isoformat()]
    _, none = await served.admin("GET", f"/admin/spend?to={today}")
    assert none["data"] == []


async def test_the_gateway_refuses_to_start_without_its_admin_key(tmp_path: Path) -> None:
    config = {
        "providers": [{"name": "sim", "type": "simulated", "models": ["m"]}],
        "gateway": {"admin_key_env": "NOT_SET_ADMIN_KEY"},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    result = await run_cli("serve", "-c", str(path), "--port", "0", cwd=tmp_path)
    assert result.code == 2
    assert "NOT_SET_ADMIN_KEY is not set" in result.err
    async with (
        gateway(None) as plain,  # no admin_key_env: no /admin at all
        aiohttp.ClientSession() as session,
    ):
        status, answer = await admin(session, plain.url, "GET", "/admin/keys")
    assert (status, answer["error"]["code"]) == (404, "not_found")
