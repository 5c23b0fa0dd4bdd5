"""A config reload hands the running routing state new entries and rules
(``reconfigure``): everything counted so far stays, the new rules apply from the next
decision on. Each test runs on the in-memory state and on the Redis state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from polyroute.router.config import Limits, RetryBudget
from polyroute.router.state import BudgetLimit, Denied, Lease, Reservation, RoutingState
from tests.state.helpers import make_state

Make = Callable[..., Any]
KEY = {"key:a": BudgetLimit(10.0, "day")}


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


def reconfigure(
    state: RoutingState,
    names: list[str],
    *,
    failures: int = 2,
    seconds: float = 30.0,
    limits: dict[str, dict[str, int]] | None = None,
    budget: dict[str, Any] | None = None,
) -> None:
    state.reconfigure(
        names=names,
        failures=failures,
        cooldown_seconds=seconds,
        limits={name: Limits(**value) for name, value in (limits or {}).items()},
        budget=RetryBudget(**budget) if budget is not None else None,
    )


def _one_token() -> int:
    return 1


async def test_limit_windows_are_kept_under_the_new_limits(make: Make) -> None:
    state = await make(limits={"a": {"rpm": 2}})
    taken = [await state.acquire("a", _one_token) for _ in range(2)]
    assert all(isinstance(lease, Lease) for lease in taken)
    reconfigure(state, ["a", "b", "c"], limits={"a": {"rpm": 3}, "c": {"rpm": 1}})
    # a's two starts of this minute still count: one more fits under its new rpm of 3.
    assert isinstance(await state.acquire("a", _one_token), Lease)
    denied = await state.acquire("a", _one_token)
    assert isinstance(denied, Denied)
    assert denied.reason == "rpm limit 3 reached"
    assert isinstance(await state.acquire("c", _one_token), Lease)  # a new entry's limits
    assert isinstance(await state.acquire("c", _one_token), Denied)
    reconfigure(state, ["a", "b", "c"])  # no limits any more: nothing holds a back
    assert all([isinstance(await state.acquire("a", _one_token), Lease) for _ in range(5)])


async def test_circuits_are_kept_and_the_new_cooldown_rules_apply(make: Make) -> None:
    state = await make(names=("b", "c"), failures=2, seconds=30)
    for _ in range(2):
        await state.record_failure("b")
    assert state.state("b") == "open"
    await state.record_failure("c")  # one failure of two: counted, still closed
    reconfigure(state, ["b", "c", "d"], failures=1, seconds=5)
    assert state.state("b") == "open"
    assert 25 < state.seconds_left("b") <= 30  # opened under the old rules: kept
    assert await state.record_failure("d") is True  # one failure opens now
    assert 4 < state.seconds_left("d") <= 5


async def test_a_removed_entry_still_takes_the_reports_of_requests_on_it(make: Make) -> None:
    state = await make(names=("a", "b"), limits={"a": {"concurrent": 1}})
    lease = await state.acquire("a", _one_token)
    assert isinstance(lease, Lease)
    reconfigure(state, ["b"])
    lease.end(5)  # the attempt that was on "a" ends after the reload
    await state.record_failure("a")
    state.record_success("a")
    assert state.load("a").in_flight == 0


async def test_budgets_spend_key_windows_and_records_are_kept(make: Make) -> None:
    state = await make()
    reservation = await state.reserve(KEY, 3.0, 60)
    assert isinstance(reservation, Reservation)
    await state.settle(reservation, 2.5)
    assert [await state.admit_key("k", 2) for _ in range(2)] == [None, None]
    await state.put_record("r", b"kept", 60)
    reconfigure(state, ["a", "b", "c"], limits={"c": {"rpm": 10}})
    assert state.spent("key:a", KEY["key:a"]) == pytest.approx(2.5)
    assert await state.remaining("key:a", KEY["key:a"]) == pytest.approx(7.5)
    assert await state.admit_key("k", 2) is not None  # its minute is still full
    assert await state.get_record("r") == b"kept"


async def test_the_retry_budget_follows_the_new_config(make: Make) -> None:
    state = await make()
    assert await state.spend_attempt()  # no budget: no cap
    closed = {"ratio": 0.0, "min_per_second": 0.1, "window_seconds": 10}
    reconfigure(state, ["a", "b"], budget=closed)
    assert await state.spend_attempt()  # the minimum: 0.1/s over 10 s is one
    assert not await state.spend_attempt()
    reconfigure(state, ["a", "b"], budget={**closed, "min_per_second": 0.2})
    assert await state.spend_attempt()  # its window kept: one spent, two allowed now
    assert not await state.spend_attempt()
    reconfigure(state, ["a", "b"])
    assert await state.spend_attempt()
