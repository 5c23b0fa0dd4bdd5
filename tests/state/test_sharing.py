"""Two states on one real redis-server behave as one: what one process learns or
takes, the other honours. (Separate OS processes: tests/state/test_processes.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from polyroute.router.state import Lease, RoutingState
from tests.redis_server import RedisServer
from tests.state.helpers import make_state, until

Pair = Callable[..., Any]


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[Pair]:
    made: list[RoutingState] = []

    async def build(**keys: Any) -> tuple[RoutingState, RoutingState]:
        states = (make_state("redis", redis_url, **keys), make_state("redis", redis_url, **keys))
        for state in states:
            await state.start()
            made.append(state)
        return states

    yield build
    for state in made:
        await state.aclose()


async def test_a_circuit_opened_by_one_is_honoured_by_the_other(pair: Pair) -> None:
    one, two = await pair(failures=2, seconds=30)
    await one.record_failure("a")
    await until(lambda: two.mirror.failures("a") == 1)  # counts are shared too
    assert await two.record_failure("a") is True  # the second failure, in another process
    await until(lambda: one.state("a") == "open")
    assert not await one.admit("a")
    two.record_success("a")
    await until(lambda: one.state("a") == "closed")


async def test_exactly_one_half_open_probe_cluster_wide(pair: Pair) -> None:
    one, two = await pair(failures=1, seconds=0)
    await one.record_failure("a")
    await until(lambda: two.state("a") == "half-open")
    admitted = await asyncio.gather(*(s.admit("a") for s in (one, two) for _ in range(10)))
    assert admitted.count(True) == 1


async def test_rpm_holds_under_a_burst_split_across_processes(pair: Pair) -> None:
    one, two = await pair(limits={"a": {"rpm": 5}})
    results = await asyncio.gather(
        *(state.acquire("a", lambda: 1) for _ in range(10) for state in (one, two))
    )
    assert sum(isinstance(result, Lease) for result in results) == 5


async def test_concurrent_holds_across_processes_and_frees_on_end(pair: Pair) -> None:
    one, two = await pair(limits={"a": {"concurrent": 3}})
    results = await asyncio.gather(
        *(state.acquire("a", lambda: 1) for _ in range(4) for state in (one, two))
    )
    leases = [result for result in results if isinstance(result, Lease)]
    assert len(leases) == 3
    leases[0].end()
    assert isinstance(await one.acquire("a", lambda: 1), Lease)
    assert not isinstance(await two.acquire("a", lambda: 1), Lease)


async def test_the_retry_budget_is_one_for_the_cluster(pair: Pair) -> None:
    one, two = await pair(budget={"ratio": 0.0, "min_per_second": 0.2, "window_seconds": 10})
    assert await one.spend_attempt()
    assert await two.spend_attempt()
    assert not await one.spend_attempt()
    assert not await two.spend_attempt()


async def test_requests_counted_by_one_fund_retries_in_the_other(pair: Pair) -> None:
    one, two = await pair(budget={"ratio": 0.5, "min_per_second": 0.0, "window_seconds": 10})
    assert not await two.spend_attempt()
    for _ in range(4):
        one.count_request()
    await one.sync()
    assert [await two.spend_attempt() for _ in range(3)] == [True, True, False]


async def test_load_in_flight_is_the_sum_of_every_process(pair: Pair) -> None:
    one, two = await pair()
    leases = [await one.acquire("a", lambda: 1) for _ in range(3)]
    await one.sync()
    await two.sync()
    assert two.load("a").in_flight == 3
    held = await two.acquire("a", lambda: 1)
    assert two.load("a").in_flight == 4
    for lease in [*leases, held]:
        assert isinstance(lease, Lease)
        lease.end()
    await one.sync()
    await two.sync()
    assert two.load("a").in_flight == 0


async def test_latency_figures_are_merged_by_attempts(pair: Pair) -> None:
    one, two = await pair()
    for _ in range(3):
        one.stats["a"].record_first_chunk(100)
        one.stats["a"].record_success(100, 100)
    two.stats["a"].record_first_chunk(20)
    two.stats["a"].record_success(100, 100)
    await one.sync()
    await two.sync()
    assert two.load("a").latency_ms == pytest.approx((100 * 3 + 20) / 4)


async def test_an_upstream_out_of_requests_blocks_it_everywhere(pair: Pair) -> None:
    one, two = await pair(limits={"b": {"rpm": 100}})
    one.block("a", 30, "upstream reports no requests or tokens left")
    one.block("b", 30, "upstream reports no requests or tokens left")
    # Each block is a message from one to two; wait until both arrived.
    await until(lambda: all(two.local.blocked(name) for name in "ab"))  # type: ignore[attr-defined]
    for name in ("a", "b"):
        assert not isinstance(await two.acquire(name, lambda: 1), Lease)


async def test_gateway_key_rpm_is_counted_once_for_the_cluster(pair: Pair) -> None:
    one, two = await pair()
    waits = [await state.admit_key("team", 3) for state in (one, two, one, two)]
    assert waits[:3] == [None, None, None]
    assert waits[3] is not None


async def test_a_report_older_than_the_last_applied_is_ignored(pair: Pair) -> None:
    one, _ = await pair(failures=1)
    await one.record_failure("a")
    assert one.state("a") == "open"
    # The same circuit as reported earlier by a message that arrived late: closed.
    one._apply("c\ta\t0\t-1\t0\t1")  # type: ignore[attr-defined]
    assert one.state("a") == "open"


async def test_scripts_flushed_from_redis_are_loaded_again(
    pair: Pair, redis_server: RedisServer
) -> None:
    one, _ = await pair(limits={"a": {"rpm": 10}})
    redis_server.cli("SCRIPT", "FLUSH")
    assert isinstance(await one.acquire("a", lambda: 1), Lease)
    assert one.decisions == {"shared": 1, "local": 0}
