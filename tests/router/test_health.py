"""Cooldown and half-open recovery, with a fake clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from structlog.testing import capture_logs

from polyroute import AllProvidersFailed, InMemoryHealth, Router
from tests.clock import Clock
from tests.router.helpers import FakeSleep, collect, entry
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.scripted import Script

Start = Callable[[], Awaitable[DarkAIUpstream]]


async def test_circuit_half_opens_for_one_probe_when_the_cooldown_is_over() -> None:
    # The same contract on both backends, without a clock: tests/state/test_contract.py.
    clock = Clock()
    health = InMemoryHealth(failures=2, seconds=30, clock=clock)
    assert await health.record_failure("a") is False
    assert await health.record_failure("a") is True
    assert not await health.admit("a")
    clock.now += 29
    assert await health.record_failure("a") is False  # extended: 30 s from now
    clock.now += 29
    assert health.state("a") == "open"
    clock.now += 1
    assert health.state("a") == "half-open"
    assert await health.admit("a") is True
    assert await health.admit("a") is False  # the one probe is taken
    health.record_success("a")
    assert health.state("a") == "closed"
    assert health.failures("a") == 0


async def test_failed_probe_reopens_and_a_cancelled_probe_is_released() -> None:
    clock = Clock()
    health = InMemoryHealth(failures=1, seconds=10, clock=clock)
    await health.record_failure("a")
    clock.now += 10
    assert await health.admit("a")
    assert await health.record_failure("a") is True
    assert health.state("a") == "open"
    clock.now += 10
    assert await health.admit("a")
    health.release("a")
    assert await health.admit("a")


async def test_cooling_entry_is_skipped_then_probed_and_recovers(start_darkai: Start) -> None:
    flaky, steady = await start_darkai(), await start_darkai()
    flaky.default = Script(status=503)
    clock = Clock()
    health = InMemoryHealth(failures=2, seconds=30, clock=clock)
    config = {
        "providers": [entry("flaky", flaky), entry("steady", steady)],
        "retry": {"attempts": 1},
    }
    async with Router.from_config(config, health=health, sleep=FakeSleep()) as router:
        with capture_logs() as logs:
            for _ in range(2):
                _, stream = await collect(router)
                assert stream.provider == "steady"
        assert [log["provider"] for log in logs if log["event"] == "provider.cooldown"] == ["flaky"]
        assert health.state("flaky") == "open"

        _, stream = await collect(router)  # skipped while cooling down: no request reaches it
        assert [a.provider for a in stream.attempts] == ["steady"]
        assert len(flaky.requests) == 2

        clock.now += 30
        flaky.default = Script()  # it recovered
        _, stream = await collect(router)
        assert stream.provider == "flaky"
        assert health.state("flaky") == "closed"


async def test_cooling_down_is_reported_when_nothing_else_is_left(start_darkai: Start) -> None:
    server = await start_darkai()
    server.default = Script(status=500)
    config = {
        "providers": [entry("only", server)],
        "retry": {"attempts": 1},
        "cooldown": {"failures": 1},
    }
    async with Router.from_config(config, sleep=FakeSleep()) as router:
        with pytest.raises(AllProvidersFailed):
            await collect(router)
        with pytest.raises(AllProvidersFailed, match=r"only \(gpt-4o\): cooling down") as caught:
            await collect(router)
    assert caught.value.attempts == []
    assert len(server.requests) == 1


async def test_client_errors_do_not_cool_an_entry_down(start_darkai: Start) -> None:
    server = await start_darkai()
    server.default = Script(status=400)
    health = InMemoryHealth(failures=1, seconds=30)
    async with Router.from_config({"providers": [entry("a", server)]}, health=health) as router:
        with pytest.raises(AllProvidersFailed):
            await collect(router)
    assert health.state("a") == "closed"


async def test_retries_stop_once_the_entry_starts_cooling_down(start_darkai: Start) -> None:
    server = await start_darkai()
    server.default = Script(status=503)
    config = {
        "providers": [entry("a", server)],
        "retry": {"attempts": 5},
        "cooldown": {"failures": 2},
    }
    async with Router.from_config(config, sleep=FakeSleep()) as router:
        with pytest.raises(AllProvidersFailed):
            await collect(router)
    assert len(server.requests) == 2


async def test_states_read_as_words_with_the_time_left() -> None:
    from polyroute.router.health import describe

    clock = Clock()
    health = InMemoryHealth(failures=1, seconds=30, clock=clock)
    assert describe(health, "a") == "healthy"
    await health.record_failure("a")
    clock.now += 18
    assert describe(health, "a") == "cooling down (12 s left)"
    assert health.seconds_left("a") == 12
    clock.now += 12
    assert describe(health, "a") == "on trial (next request probes it)"
    await health.admit("a")
    assert describe(health, "a") == "on trial (a probe is running)"
