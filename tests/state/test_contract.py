"""One contract, two backends: every test here runs on the in-memory state and on the
Redis state (a real redis-server), and must hold the same way on both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from polyroute.router.state import Denied, Lease, RoutingState
from tests.state.helpers import make_state

Make = Callable[..., Any]


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    made: list[RoutingState] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    async def build(**keys: Any) -> RoutingState:
        state = make_state(request.param, url, **keys)
        await state.start()
        made.append(state)
        return state

    yield build
    for state in made:
        await state.aclose()


def _one_token() -> int:
    return 1


async def test_circuit_opens_at_the_threshold_and_a_later_failure_extends_it(make: Make) -> None:
    state = await make(failures=2, seconds=30)
    assert await state.record_failure("a") is False
    assert state.state("a") == "closed"
    assert await state.admit("a")
    assert await state.record_failure("a") is True
    assert state.state("a") == "open"
    assert not await state.admit("a")
    assert 29 < state.seconds_left("a") <= 30
    # A request that started before the circuit opened fails too: the cooldown is
    # extended (not a second "opened"), never shortened.
    assert await state.record_failure("a") is False
    assert state.state("a") == "open"
    assert state.state("b") == "closed"


async def test_half_open_admits_exactly_one_probe_among_many(make: Make) -> None:
    state = await make(failures=1, seconds=0)  # the cooldown is over as soon as it opens
    assert await state.record_failure("a") is True
    assert state.state("a") == "half-open"
    admitted = await asyncio.gather(*(state.admit("a") for _ in range(20)))
    assert admitted.count(True) == 1
    state.release("a")  # the probe was cancelled: another may try
    assert await state.admit("a")
    assert await state.record_failure("a") is True  # the probe failed: open again
    assert await state.admit("a")
    state.record_success("a")
    assert state.state("a") == "closed"
    assert await state.record_failure("a") is True  # one failure counted from zero


async def test_a_success_resets_the_count(make: Make) -> None:
    state = await make(failures=2)
    await state.record_failure("a")
    state.record_success("a")
    assert await state.record_failure("a") is False
    assert state.state("a") == "closed"


async def test_rpm_admits_that_many_then_says_when(make: Make) -> None:
    state = await make(limits={"a": {"rpm": 3}})
    leases = [await state.acquire("a", _one_token) for _ in range(3)]
    assert all(isinstance(lease, Lease) for lease in leases)
    denied = await state.acquire("a", _one_token)
    assert isinstance(denied, Denied)
    assert denied.reason == "rpm limit 3 reached"
    assert 59 < denied.retry_in <= 60
    for lease in leases:
        assert isinstance(lease, Lease)
        lease.end()
    assert isinstance(await state.acquire("a", _one_token), Denied)  # starts, not in flight
    assert isinstance(await state.acquire("b", _one_token), Lease)  # no limits


async def test_concurrent_counts_places_in_flight(make: Make) -> None:
    state = await make(limits={"a": {"concurrent": 2}})
    first, second = await state.acquire("a", _one_token), await state.acquire("a", _one_token)
    assert isinstance(first, Lease)
    assert isinstance(second, Lease)
    assert state.load("a").in_flight == 2
    third = await state.acquire("a", _one_token)
    assert isinstance(third, Denied)
    assert third.reason == "concurrent limit 2 reached"
    first.end()
    first.end()  # twice is once
    assert state.load("a").in_flight == 1
    assert isinstance(await state.acquire("a", _one_token), Lease)


async def test_tpm_reserves_the_estimate_and_corrects_it_with_usage(make: Make) -> None:
    state = await make(limits={"a": {"tpm": 1000}})
    first = await state.acquire("a", lambda: 600)
    assert isinstance(first, Lease)
    assert first.tokens == 600
    denied = await state.acquire("a", lambda: 600)
    assert isinstance(denied, Denied)
    assert denied.reason == "tpm limit 1000 reached"
    first.end(100)  # the answer said it used 100
    assert isinstance(await state.acquire("a", lambda: 600), Lease)


async def test_an_upstream_with_nothing_left_is_skipped_until_its_reset(make: Make) -> None:
    state = await make(limits={"b": {"rpm": 100}})
    assert isinstance(await state.acquire("a", _one_token), Lease)
    for name in ("a", "b"):
        state.block(name, 10, "upstream reports no requests or tokens left")
        denied = await state.acquire(name, _one_token)
        assert isinstance(denied, Denied)
        assert denied.reason == "upstream reports no requests or tokens left"
        assert 9 < denied.retry_in <= 10


async def test_retry_budget_allows_the_minimum_plus_a_ratio_of_requests(make: Make) -> None:
    state = await make(budget={"ratio": 0.5, "min_per_second": 0.1, "window_seconds": 10})
    assert await state.spend_attempt()  # the minimum: 0.1/s over 10 s is one
    assert not await state.spend_attempt()
    for _ in range(4):
        state.count_request()
    await state.sync()
    assert [await state.spend_attempt() for _ in range(3)] == [True, True, False]


async def test_no_budget_means_no_cap(make: Make) -> None:
    state = await make()
    assert all([await state.spend_attempt() for _ in range(100)])


async def test_gateway_key_rpm(make: Make) -> None:
    state = await make()
    assert [await state.admit_key("team", 2) for _ in range(2)] == [None, None]
    wait = await state.admit_key("team", 2)
    assert wait is not None
    assert 59 < wait <= 60
    assert await state.admit_key("other", 2) is None


async def test_load_counts_attempts_in_flight_with_and_without_limits(make: Make) -> None:
    state = await make(limits={"a": {"rpm": 10}})
    leases = [await state.acquire(name, _one_token) for name in ("a", "a", "b")]
    assert (state.load("a").in_flight, state.load("b").in_flight) == (2, 1)
    for lease in leases:
        assert isinstance(lease, Lease)
        lease.end()
    assert (state.load("a").in_flight, state.load("b").in_flight) == (0, 0)
