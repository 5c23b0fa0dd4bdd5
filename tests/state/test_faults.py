"""Redis unreachable, frozen or restarted empty: routing goes on with what the process
knows, one ``state.degraded`` event, then ``state.restored`` once Redis is back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from structlog.testing import capture_logs

from polyroute import Router
from polyroute.router.state import Lease
from tests.redis_server import RedisServer
from tests.router.helpers import FakeSleep, collect, entry
from tests.state.helpers import make_state, until
from tests.upstreams.darkai import DarkAIUpstream

Start = Callable[[], Awaitable[DarkAIUpstream]]


def _events(logs: list[dict[str, object]], *names: str) -> list[str]:
    return [str(log["event"]) for log in logs if log["event"] in names]


async def test_unreachable_at_start_decides_alone_then_shares_what_it_learned(
    own_redis: RedisServer,
) -> None:
    state = make_state("redis", own_redis.url, failures=1, limits={"a": {"rpm": 1}})
    with capture_logs() as logs:
        await state.start()  # nothing listens on the port yet
        assert state.degraded
        assert await state.record_failure("b") is True  # learned alone
        assert isinstance(await state.acquire("a", lambda: 1), Lease)
        assert not isinstance(await state.acquire("a", lambda: 1), Lease)  # rpm, locally
        own_redis.start()
        await until(lambda: not state.degraded)
    assert _events(logs, "state.degraded", "state.restored") == [
        "state.degraded",
        "state.restored",
    ]
    other = make_state("redis", own_redis.url, failures=1)
    await other.start()
    assert other.state("b") == "open"  # pushed to Redis on reconnecting
    await other.aclose()
    await state.aclose()


async def test_a_frozen_redis_never_holds_a_request(
    start_darkai: Start, own_redis: RedisServer
) -> None:
    server = await start_darkai()
    config = {
        "providers": [entry("a", server, limits={"rpm": 1000, "concurrent": 10})],
        "state": {"backend": "redis", "url": own_redis.start().url, "timeout_ms": 50},
    }
    async with Router.from_config(config, sleep=FakeSleep()) as router:
        await collect(router)
        own_redis.pause()
        try:
            with capture_logs() as logs:
                # Each needs a script: those sent before a patient PING finds Redis
                # frozen wait out the timeout; after it, the process decides alone.
                while not router.state.degraded:
                    _, stream = await collect(router)
                    assert stream.status == "complete"
                _, stream = await collect(router)
                assert stream.status == "complete"
        finally:
            own_redis.resume()
        assert _events(logs, "state.degraded") == ["state.degraded"]
        assert router.state.decisions["local"] >= 1
        await until(lambda: not router.state.degraded, within=20)


async def test_redis_killed_and_restarted_empty_mid_load_loses_no_request(
    start_darkai: Start, own_redis: RedisServer
) -> None:
    server = await start_darkai()
    config = {
        "providers": [entry("a", server, limits={"rpm": 100_000, "concurrent": 50})],
        "retry": {"budget": {"ratio": 0.2}},
        "state": {"backend": "redis", "url": own_redis.start().url},
    }
    done: list[str] = []

    async def client() -> None:
        for _ in range(30):
            text, stream = await collect(router)
            assert text == "Hello, world!"
            done.append(stream.status)

    with capture_logs() as logs:
        async with Router.from_config(config, sleep=FakeSleep()) as router:
            clients = [asyncio.create_task(client()) for _ in range(10)]
            await until(lambda: len(done) >= 50)
            own_redis.kill()
            await until(lambda: len(done) >= 150)
            own_redis.start()  # empty: nothing was saved
            await until(lambda: not router.state.degraded, within=20)
            await asyncio.gather(*clients)
    assert done == ["complete"] * 300
    assert _events(logs, "state.degraded", "state.restored") == [
        "state.degraded",
        "state.restored",
    ]
