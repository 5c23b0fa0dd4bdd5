"""Two `polyroute serve` processes on one real redis-server share what they know:
circuits, provider limits, the retry budget and gateway keys' limits; and a Redis
killed and restarted under load loses no request."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.redis_server import RedisServer
from tests.server.helpers import Process, gateway
from tests.state.helpers import until
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.scripted import Script

HI = [{"role": "user", "content": "Hi"}]
KEY = "gw-shared-key-0f9e8d7c6b5a"


def _config(tmp_path: Path, redis_url: str, providers: list[dict[str, Any]], **extra: Any) -> Path:
    data = {
        "providers": providers,
        "state": {"backend": "redis", "url": redis_url},
        "retry": {"attempts": 1},
        **extra,
    }
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _darkai(name: str, server: DarkAIUpstream, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "darkai", "api_endpoint": server.url, "working": True, **extra}


async def _gateways(stack: AsyncExitStack, config: Path, count: int = 2) -> list[Process]:
    env = {"GW_SHARED_KEY": KEY}
    return [await stack.enter_async_context(gateway(config, env=env)) for _ in range(count)]


async def _ask(
    session: aiohttp.ClientSession, served: Process, *, key: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": "gpt-4o", "messages": HI}
    async with session.post(
        f"{served.url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        return response.status, await response.json(), dict(response.headers)


async def _until_page(
    session: aiohttp.ClientSession, url: str, says: Callable[[str], bool], within: float
) -> None:
    """Poll ``url`` until its body ``says`` so; fails past ``within`` seconds."""

    async def poll() -> None:
        while True:
            async with session.get(url) as response:
                if says(await response.text()):
                    return

    await asyncio.wait_for(poll(), within)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_a_circuit_opened_by_one_gateway_is_honoured_by_the_other(
    tmp_path: Path, redis_url: str, start_darkai: Any, session: aiohttp.ClientSession
) -> None:
    flaky, steady = await start_darkai(), await start_darkai()
    flaky.default = Script(status=503)
    providers = [_darkai("flaky", flaky), _darkai("steady", steady)]
    config = _config(tmp_path, redis_url, providers, cooldown={"failures": 1, "seconds": 60})
    async with AsyncExitStack() as stack:
        one, two = await _gateways(stack, config)
        status, _, headers = await _ask(session, one)
        assert (status, headers["x-polyroute-provider"]) == (200, "steady")
        assert len(flaky.requests) == 1
        # Wait on the other gateway's own report that the circuit is open.
        circuit_open = 'polyroute_circuit_open{provider="flaky"} 1'
        await _until_page(session, f"{two.url}/metrics", lambda text: circuit_open in text, 10)
        for _ in range(5):
            status, _, headers = await _ask(session, two)
            assert headers["x-polyroute-provider"] == "steady"
        assert len(flaky.requests) == 1  # the second gateway never tried it


async def test_rpm_concurrent_and_key_limits_hold_across_gateways(
    tmp_path: Path, redis_url: str, start_darkai: Any, session: aiohttp.ClientSession
) -> None:
    limited, slow, spare = await start_darkai(), await start_darkai(), await start_darkai()
    slow.default = Script(delay=0.3)  # long enough for the burst to overlap
    providers = [
        _darkai("limited", limited, limits={"rpm": 4}, models=["gpt-4o"]),
        _darkai("slow", slow, limits={"concurrent": 2}, models=["gpt-4o"], priority=1),
        _darkai("spare", spare, priority=2),
    ]
    keys = [{"name": "shared", "key_env": "GW_SHARED_KEY", "rpm": 9}]
    config = _config(tmp_path, redis_url, providers, gateway={"keys": keys})
    async with AsyncExitStack() as stack:
        one, two = await _gateways(stack, config)
        results = await asyncio.gather(
            *(_ask(session, served, key=KEY) for _ in range(5) for served in (one, two))
        )
        async with session.get(f"{one.url}/metrics") as response:
            metrics = await response.text()
        assert "polyroute_state_degraded 0.0" in metrics
        shared = re.search(r'polyroute_state_decisions\{where="shared"\} (\d+)', metrics)
        assert shared is not None
        assert int(shared.group(1)) >= 5  # its half of the key's rpm and the limits
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 9 + [429]  # the key's rpm, counted once for both
    served_by = [headers.get("x-polyroute-provider") for status, _, headers in results]
    assert served_by.count("limited") == 4
    assert served_by.count("slow") == 2
    assert served_by.count("spare") == 3
    assert (len(limited.requests), len(slow.requests)) == (4, 2)


async def test_the_retry_budget_holds_across_gateways(
    tmp_path: Path, redis_url: str, start_darkai: Any, session: aiohttp.ClientSession
) -> None:
    servers = [await start_darkai() for _ in range(3)]
    for server in servers:
        server.default = Script(status=503)
    providers = [_darkai(f"p{i}", server) for i, server in enumerate(servers)]
    budget = {"ratio": 0.0, "min_per_second": 0.3, "window_seconds": 10}  # three extra
    config = _config(
        tmp_path,
        redis_url,
        providers,
        retry={"attempts": 1, "budget": budget},
        cooldown={"failures": 100},
    )
    async with AsyncExitStack() as stack:
        one, two = await _gateways(stack, config)
        for served in (one, two, one, two):
            status, _, _ = await _ask(session, served)
            assert status == 502
    attempts = sum(len(server.requests) for server in servers)
    assert attempts == 4 + 3  # every first attempt, and three extra for the cluster


async def test_redis_restarted_under_two_gateways_loses_no_request(
    tmp_path: Path, start_darkai: Any, session: aiohttp.ClientSession
) -> None:
    upstream = await start_darkai()
    redis = RedisServer().start()
    providers = [_darkai("a", upstream, limits={"rpm": 100_000, "concurrent": 100})]
    config = _config(tmp_path, redis.url, providers)
    statuses: list[int] = []
    try:
        async with AsyncExitStack() as stack:
            gateways = await _gateways(stack, config)

            async def client(served: Process) -> None:
                for _ in range(40):
                    statuses.append((await _ask(session, served))[0])

            clients = [asyncio.create_task(client(g)) for g in gateways for _ in range(4)]
            await until(lambda: len(statuses) >= 60, within=30)
            redis.kill()
            for served in gateways:  # each gateway says it decides alone
                await _until_state(session, served, "deciding alone")
            assert len(statuses) < 320
            redis.start()  # empty: nothing was saved
            for served in gateways:
                await _until_state(session, served, "(shared)")
            await asyncio.gather(*clients)
    finally:
        redis.close()
    assert statuses == [200] * 320


async def _until_state(session: aiohttp.ClientSession, served: Process, words: str) -> None:
    """Poll the gateway's /readyz until its ``state`` says ``words``."""
    url = f"{served.url}/readyz"
    await _until_page(session, url, lambda text: words in json.loads(text)["state"], 30)
