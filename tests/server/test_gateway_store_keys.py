"""Runtime keys across gateways (issue 25, parts 2 and 8): two ``polyroute serve``
processes on one real redis-server and one real PostgreSQL store. A key made, revoked,
or whose team changed on one is known to the other within a second (an announcement
through Redis); with the store stopped mid-load, no request of a known key fails and the
ledger catches up once it is back. Then two processes on one SQLite file and no Redis,
which poll the store's key version instead."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
import yaml

from tests.redis_server import RedisServer
from tests.server.helpers import ADMIN_KEY, Process, admin, eventually, gateway
from tests.store.postgres_server import PostgresServer
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")

USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
HI = [{"role": "user", "content": "Hi"}]
WITHIN_S = 1.0
"""The bound: a change on one gateway holds on every other within a second."""


@dataclass
class Pair:
    """Two gateways on one store; ``one`` makes the changes, ``two`` must learn them."""

    one: Process
    two: Process
    session: aiohttp.ClientSession
    served: Counter[str] = field(default_factory=Counter)
    """Answers with status 200, by key."""

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = await admin(self.session, self.one.url, method, path, body)
        assert status in (200, 201), answer
        return answer

    async def chat(self, url: str, key: str) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "m", "messages": HI, "max_tokens": 50}
        async with self.session.post(
            f"{url}/v1/chat/completions", json=body, headers=headers
        ) as answer:
            await answer.read()
            if answer.status == 200:
                self.served[key] += 1
            return answer.status

    async def until_status(self, url: str, key: str, status: int) -> float:
        """Seconds until ``key`` gets ``status`` at ``url``."""

        async def answered() -> bool:
            return await self.chat(url, key) == status

        _, took = await eventually(answered, within=5, every=0.01)
        return took


def _config(upstream: OpenAIUpstream, **settings: Any) -> dict[str, Any]:
    entry = {"name": "up", "type": "openai", "base_url": upstream.base_url, "models": ["m"],
             "price": {"input": 1.0, "output": 2.0}}  # fmt: skip
    return {"providers": [entry], "gateway": {"admin_key_env": "ADMIN_KEY"}, **settings}


@asynccontextmanager
async def pair(config: dict[str, Any], folder: Path, env: dict[str, str]) -> AsyncIterator[Pair]:
    """Two gateways serving ``config``; checks they exit 0 and never log a secret."""
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"ADMIN_KEY": ADMIN_KEY, **env}
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        one = await stack.enter_async_context(gateway(path, "-v", "--log-format", "json", env=env))
        two = await stack.enter_async_context(gateway(path, "-v", "--log-format", "json", env=env))
        yield Pair(one, two, session)
    for process in (one, two):
        assert process.code == 0
        log = "\n".join(process.stderr)
        for secret in env.values():
            assert secret not in log
        assert log.count('"event": "keys.store_unavailable"') <= 1  # once per outage


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream() -> AsyncIterator[OpenAIUpstream]:
    server = await OpenAIUpstream().start()
    server.default = Script(usage=USAGE)
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def on_redis(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    postgres_cluster: PostgresServer,
    upstream: OpenAIUpstream,
) -> AsyncIterator[tuple[Pair, PostgresServer]]:
    """Two gateways on one Redis, the store on PostgreSQL (a schema of this module's)."""
    redis_server.cli("FLUSHALL")
    schema = f"gateway_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(postgres_cluster.dsn())
    try:
        await connection.execute(f"CREATE SCHEMA {schema}")
    finally:
        await connection.close()
    config = _config(
        upstream,
        state={"backend": "redis", "url": redis_server.url},
        store={"backend": "postgres", "dsn_env": "STORE_DSN"},
    )
    env = {"STORE_DSN": f"{postgres_cluster.dsn()}?search_path={schema}"}
    folder = tmp_path_factory.mktemp("redis-pair")
    async with pair(config, folder, env) as gateways:
        yield gateways, postgres_cluster


async def test_a_key_made_on_one_gateway_works_on_the_other_within_a_second(
    on_redis: tuple[Pair, PostgresServer],
) -> None:
    gateways, _ = on_redis
    made = await gateways.admin("POST", "/admin/keys", {"name": "new"})
    assert await gateways.until_status(gateways.two.url, made["key"], 200) < WITHIN_S
    await gateways.admin("DELETE", f"/admin/keys/{made['id']}")
    assert await gateways.until_status(gateways.two.url, made["key"], 401) < WITHIN_S
    assert await gateways.chat(gateways.one.url, made["key"]) == 401


async def test_a_team_change_reaches_the_other_gateway_within_a_second(
    on_redis: tuple[Pair, PostgresServer],
) -> None:
    gateways, _ = on_redis
    team = await gateways.admin("POST", "/admin/teams", {"name": "ops"})
    made = await gateways.admin("POST", "/admin/keys", {"name": "ops-ci", "team": "ops"})
    await gateways.until_status(gateways.two.url, made["key"], 200)
    await gateways.admin(
        "PATCH", f"/admin/teams/{team['id']}", {"budget": {"usd": 0, "period": "day"}}
    )
    assert await gateways.until_status(gateways.two.url, made["key"], 429) < WITHIN_S


async def test_a_store_stopped_mid_load_fails_no_request_of_a_known_key(
    on_redis: tuple[Pair, PostgresServer],
) -> None:
    gateways, cluster = on_redis
    made = await gateways.admin("POST", "/admin/keys", {"name": "steady"})
    key = made["key"]
    await gateways.until_status(gateways.two.url, key, 200)
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load(url: str) -> None:
        while not stop.is_set():
            statuses.append(await gateways.chat(url, key))

    workers = [asyncio.create_task(load(url)) for url in [gateways.one.url, gateways.two.url] * 2]
    try:
        await asyncio.to_thread(cluster.stop)
        status, down = await admin(gateways.session, gateways.one.url, "GET", "/admin/keys")
        assert (status, down["error"]["code"]) == (503, "store_unavailable")

        async def refresh_failed() -> bool:
            return "polyroute_store_unavailable 1.0" in await _metrics(gateways, gateways.two)

        await eventually(refresh_failed, within=5, every=0.1)  # a poll every 2 s with Redis
        during = len(statuses)
        await asyncio.to_thread(cluster.start)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert during > 0
    assert set(statuses) == {200}  # not one request failed

    async def caught_up() -> bool:
        _, spend = await admin(gateways.session, gateways.one.url, "GET", "/admin/spend")
        rows = [row for row in spend["data"] if row["group"] == made["id"]]
        return bool(rows) and rows[0]["requests"] == gateways.served[key]

    await eventually(caught_up, within=15, every=0.1)  # the ledger's backoff: up to 4 s here
    for process in (gateways.one, gateways.two):
        text = await _metrics(gateways, process)
        assert "polyroute_ledger_dropped_total 0.0" in text
        failures = re.search(r"polyroute_key_refreshes_failed_total (\S+)", text)
        assert failures is not None


async def test_without_redis_gateways_sharing_a_store_learn_keys_by_polling(
    tmp_path: Path, upstream: OpenAIUpstream
) -> None:
    config = _config(upstream, store={"backend": "sqlite", "path": str(tmp_path / "store.db")})
    async with pair(config, tmp_path, {}) as gateways:
        made = await gateways.admin("POST", "/admin/keys", {"name": "polled"})
        assert await gateways.until_status(gateways.two.url, made["key"], 200) < WITHIN_S
        await gateways.admin("DELETE", f"/admin/keys/{made['id']}")
        assert await gateways.until_status(gateways.two.url, made["key"], 401) < WITHIN_S


async def _metrics(gateways: Pair, process: Process) -> str:
    async with gateways.session.get(f"{process.url}/metrics") as answer:
        return await answer.text()
