"""Shared state does not grow with traffic: after 10,000 requests through two routers
on one Redis, every key is one of a fixed set per entry, and each has a TTL."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator
from typing import Any

from polyroute import AllProvidersFailed, Router
from polyroute.core.deltas import Delta, FinishDelta, TextDelta, Usage, UsageDelta
from polyroute.core.errors import UpstreamStatusError
from polyroute.core.request import ChatRequest
from polyroute.providers.base import Provider
from polyroute.providers.registry import Registry
from tests.redis_server import RedisServer
from tests.router.helpers import HI, FakeSleep


class Instant(Provider):
    """An upstream that answers at once, in process; every seventh answer fails."""

    type_name = "instant"
    url = "http://127.0.0.1"
    working = True
    default_model = "m"
    calls = 0

    async def stream_batches(
        self, model: str, request: ChatRequest, *, continue_from: str | None = None, **_: Any
    ) -> AsyncGenerator[list[Delta], None]:
        Instant.calls += 1
        if Instant.calls % 7 == 0:
            raise UpstreamStatusError(503, provider=self.entry_name, body="busy")
        yield [TextDelta("ok"), UsageDelta(Usage(3, 1, 4)), FinishDelta("stop")]


async def test_ten_thousand_requests_leave_a_fixed_set_of_keys_with_ttls(
    redis_server: RedisServer, redis_url: str
) -> None:
    limits = {"rpm": 1_000_000, "tpm": 100_000_000, "concurrent": 1000}
    config = {
        "providers": [
            {"name": "a", "type": "instant", "limits": limits},
            {"name": "b", "type": "instant", "limits": limits},
        ],
        "balance": "least_busy",
        "retry": {"attempts": 2, "budget": {"ratio": 0.5}},
        "cooldown": {"failures": 2, "seconds": 0.01},
        "state": {"backend": "redis", "url": redis_url, "sync_ms": 10},
    }
    registry = Registry({"instant": Instant})
    routers = [Router.from_config(config, registry=registry, sleep=FakeSleep()) for _ in "12"]
    for router in routers:
        await router.start()

    outcomes: Counter[str] = Counter()

    async def client(router: Router) -> None:
        for _ in range(250):
            try:
                async with router.stream("m", HI) as stream:
                    async for _text in stream:
                        pass
                outcomes[stream.status] += 1
            except AllProvidersFailed:  # both entries failed or cooling down: a real outcome
                outcomes["failed"] += 1
            await router.state.admit_key("team", 1_000_000)

    try:
        await asyncio.gather(*(client(router) for router in routers for _ in range(20)))
    finally:
        for router in routers:
            await router.aclose()
    assert sum(outcomes.values()) == 10_000
    assert outcomes["complete"] > 9_000
    keys = sorted(redis_server.cli("--scan").split())
    allowed = {
        "{polyroute}:" + kind for kind in ("processes", "reports", "budget", "key-rpm:team")
    } | {
        f"{{polyroute}}:{kind}:{name}"
        for kind in ("circuit", "block", "rpm", "tpm", "leases")
        for name in "ab"
    }
    assert set(keys) <= allowed
    assert "{polyroute}:rpm:a" in keys  # the requests did go through Redis
    for key in keys:
        assert int(redis_server.cli("PTTL", key)) > 0, key
    assert int(redis_server.cli("ZCARD", "{polyroute}:rpm:a")) <= 10_000  # bounded by rpm
