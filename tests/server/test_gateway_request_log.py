"""The request log of a real ``polyroute serve`` (issue 26, part 1), on SQLite and on a
real PostgreSQL: a record per request after a relay, a retry, a budget refusal and the
gateway's own refusals, read through ``/admin/requests``; content only with
``log_content``. (The store stopped under load: test_gateway_request_log_outage.py.)"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
import yaml

from tests.server.helpers import ADMIN_KEY, Process, admin, eventually, gateway
from tests.store.postgres_server import PostgresServer
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")

USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
PRICE = {"input": 1.0, "output": 2.0}
KEYS = {"CI_KEY": "pr-ci-log-0123456789", "POOR_KEY": "pr-poor-log-0123456789",
        "NARROW_KEY": "pr-narrow-log-0123456789"}  # fmt: skip
HI = [{"role": "user", "content": "Hi"}]


@dataclass
class Stage:
    """A gateway on a store, in front of two upstreams serving ``m``."""

    backend: str
    gateway: Process
    up: OpenAIUpstream
    backup: OpenAIUpstream
    session: aiohttp.ClientSession
    config: Path
    env: dict[str, str]
    """The gateway's environment: its keys, and the store's DSN."""

    @property
    def url(self) -> str:
        return self.gateway.url

    async def chat(self, key: str | None, request_id: str, model: str = "m") -> int:
        headers = {"x-request-id": request_id}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": model, "messages": HI, "max_tokens": 50}
        async with self.session.post(
            f"{self.url}/v1/chat/completions", json=body, headers=headers
        ) as answer:
            await answer.read()
            return answer.status

    async def record(self, request_id: str) -> dict[str, Any]:
        """The logged request, once the background writer has written it."""

        async def logged() -> dict[str, Any] | None:
            status, body = await admin(
                self.session, self.url, "GET", f"/admin/requests/{request_id}"
            )
            return body if status == 200 else None

        found, _ = await eventually(logged, within=10, every=0.05)
        return found


def _config(up: OpenAIUpstream, backup: OpenAIUpstream, store: dict[str, Any]) -> dict[str, Any]:
    def entry(name: str, server: OpenAIUpstream) -> dict[str, Any]:
        return {"name": name, "type": "openai", "base_url": server.base_url,
                "models": ["m", "other"], "price": PRICE}  # fmt: skip

    return {
        "providers": [entry("up", up), entry("backup", backup)],
        "retry": {"attempts": 2, "backoff_initial": 0},
        "store": store,
        "gateway": {
            "admin_key_env": "ADMIN_KEY",
            "teams": [{"name": "search"}],
            "keys": [
                {"name": "ci", "key_env": "CI_KEY", "team": "search"},
                {"name": "poor", "key_env": "POOR_KEY",
                 "budget": {"usd": 0.000001, "period": "day"}},
                {"name": "narrow", "key_env": "NARROW_KEY", "models": ["other"]},
            ],
        },
    }  # fmt: skip


async def new_schema(cluster: PostgresServer) -> str:
    schema = f"log_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(cluster.dsn())
    try:
        await connection.execute(f"CREATE SCHEMA {schema}")
    finally:
        await connection.close()
    return f"{cluster.dsn()}?search_path={schema}"


@asynccontextmanager
async def staged(
    backend: str, folder: Path, cluster: PostgresServer | None, **settings: Any
) -> AsyncIterator[Stage]:
    up = await OpenAIUpstream(models=["m", "other"]).start()
    backup = await OpenAIUpstream(models=["m", "other"]).start()
    up.default = backup.default = Script(usage=USAGE)
    env = {"ADMIN_KEY": ADMIN_KEY, **KEYS}
    if backend == "sqlite":
        store: dict[str, Any] = {"backend": "sqlite", "path": str(folder / "store.db")}
    else:
        assert cluster is not None
        env["STORE_DSN"] = await new_schema(cluster)
        store = {"backend": "postgres", "dsn_env": "STORE_DSN"}
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump({**_config(up, backup, store), **settings}))
    try:
        async with aiohttp.ClientSession() as session, gateway(path, env=env) as process:
            yield Stage(backend, process, up, backup, session, path, env)
        assert process.code == 0
        log = "\n".join(process.stderr)
        for secret in KEYS.values():
            assert secret not in log
    finally:
        await up.stop()
        await backup.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgres"])
async def stage(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stage]:
    cluster = request.getfixturevalue("postgres_cluster") if request.param == "postgres" else None
    folder = tmp_path_factory.mktemp(f"log-{request.param}")
    async with staged(request.param, folder, cluster) as served:
        yield served


def unique_id(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


async def test_a_relay_is_logged_with_each_attempt_and_where_it_took_over(stage: Stage) -> None:
    stage.up.then(Script(reset_after=2))
    request_id = unique_id("relay")
    assert await stage.chat(KEYS["CI_KEY"], request_id) == 200
    record = await stage.record(request_id)
    assert (record["id"], record["endpoint"], record["key"], record["team"]) == (
        request_id, "chat", "ci", "search",
    )  # fmt: skip
    assert (record["status"], record["provider"], record["model"]) == ("switched", "backup", "m")
    first, second = record["attempts"]
    assert (first["provider"], first["outcome"], first["relay_offset"]) == ("up", "failed", 0)
    assert (first["error_type"], first["chars"]) == ("UpstreamConnectionError", len("Hello, "))
    assert (second["provider"], second["outcome"]) == ("backup", "ok")
    assert second["relay_offset"] == len("Hello, ")
    assert record["cost_status"] == "estimated"  # the cut attempt never said its usage
    assert record["usage"]["input_tokens"] == 100
    assert record["time"].endswith("Z")
    assert record["content"] is None


async def test_a_retry_is_one_complete_record_with_the_failed_try(stage: Stage) -> None:
    stage.up.then(Script(status=503, error_body='{"error": {"message": "overloaded"}}'))
    request_id = unique_id("retry")
    assert await stage.chat(KEYS["CI_KEY"], request_id) == 200
    record = await stage.record(request_id)
    assert (record["status"], record["provider"], record["finish_reason"]) == (
        "complete", "up", "stop",
    )  # fmt: skip
    failed, served = record["attempts"]
    assert (failed["outcome"], failed["status_code"], failed["error_type"]) == (
        "failed", 503, "UpstreamStatusError",
    )  # fmt: skip
    assert "overloaded" in failed["error"]
    assert (served["outcome"], served["chars"]) == ("ok", len("Hello, world!"))
    assert record["usage"] == {"input_tokens": 100, "cached_input_tokens": 0,
                               "output_tokens": 20, "reasoning_tokens": 0}  # fmt: skip
    assert record["cost_usd"] == pytest.approx((100 * 1.0 + 20 * 2.0) / 1e6)
    assert record["cost_status"] == "exact"


async def test_a_budget_refusal_is_logged_as_failed_without_an_attempt(stage: Stage) -> None:
    request_id = unique_id("budget")
    assert await stage.chat(KEYS["POOR_KEY"], request_id) == 429
    record = await stage.record(request_id)
    assert (record["status"], record["key"], record["error_type"]) == (
        "failed", "poor", "BudgetExceededError",
    )  # fmt: skip
    assert "key:poor" in record["error"]
    assert (record["attempts"], record["provider"], record["cost_usd"]) == ([], None, 0.0)


async def test_the_gateways_own_refusals_are_logged_with_their_code(stage: Stage) -> None:
    narrow, anonymous, unknown = unique_id("narrow"), unique_id("anonymous"), unique_id("unknown")
    assert await stage.chat(KEYS["NARROW_KEY"], narrow) == 403
    assert await stage.chat(None, anonymous) == 401
    assert await stage.chat(KEYS["CI_KEY"], unknown, model="no-such-model") == 404
    refused = await stage.record(narrow)
    assert (refused["status"], refused["key"], refused["error_type"]) == (
        "failed", "narrow", "model_not_allowed",
    )  # fmt: skip
    assert "may not use model 'm'" in refused["error"]
    nobody = await stage.record(anonymous)
    assert (nobody["key"], nobody["error_type"]) == (None, "invalid_api_key")
    missing = await stage.record(unknown)
    assert (missing["status"], missing["error_type"], missing["attempts"]) == (
        "failed", "model_not_found", [],
    )  # fmt: skip


async def test_content_is_logged_only_for_a_key_that_asks_for_it(stage: Stage) -> None:
    status, made = await admin(
        stage.session, stage.url, "POST", "/admin/keys", {"name": "audited", "log_content": True}
    )
    assert status == 201
    shown = unique_id("shown")

    async def served() -> bool:  # the new key is known to the gateway within a second
        return await stage.chat(made["key"], shown) == 200

    await eventually(served, within=5)
    record = await stage.record(shown)
    assert record["key"] == "audited"
    assert record["content"] == {
        "messages": HI,
        "answer": {"role": "assistant", "content": "Hello, world!"},
    }


async def test_the_admin_api_lists_newest_first_by_filter_and_cursor(stage: Stage) -> None:
    ids = [unique_id("listed") for _ in range(3)]
    for request_id in ids:
        assert await stage.chat(KEYS["NARROW_KEY"], request_id, model="other") == 200
    await stage.record(ids[-1])

    async def get(path: str) -> tuple[int, Any]:
        return await admin(stage.session, stage.url, "GET", path)

    status, first = await get("/admin/requests?key=narrow&status=complete&limit=2")
    assert status == 200
    assert [item["id"] for item in first["data"]] == ids[:0:-1]
    status, rest = await get(
        f"/admin/requests?key=narrow&status=complete&limit=2&cursor={first['next_cursor']}"
    )
    assert [item["id"] for item in rest["data"]] == [ids[0]]
    assert rest["next_cursor"] is None
    since = first["data"][0]["time"]
    _, newest = await get(f"/admin/requests?key=narrow&since={since}")
    assert [item["id"] for item in newest["data"]] == [ids[-1]]
    status, missing = await get("/admin/requests/no-such-request")
    assert (status, missing["error"]["code"]) == (404, "request_not_found")
    status, bad = await get("/admin/requests?status=ok")
    assert (status, bad["error"]["code"]) == (400, "invalid_value")
    status, _ = await admin(stage.session, stage.url, "GET", "/admin/requests", key=KEYS["CI_KEY"])
    assert status == 403  # a gateway key does not open the log
