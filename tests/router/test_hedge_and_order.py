"""Hedged first chunks and health-aware ordering."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

from structlog.testing import capture_logs

from polyroute import Attempt, InMemoryHealth, Router
from polyroute.providers.simulated import Simulated
from polyroute.router.policy import RoutingPolicy
from polyroute.router.state import MemoryState
from polyroute.router.stats import EntryStats, StatsBook
from tests.router.helpers import collect, entry
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.scripted import Script
from tests.upstreams.server import wait_closed

Start = Callable[[], Awaitable[DarkAIUpstream]]


def sim(name: str, first_chunk_ms: float, **options: Any) -> dict[str, Any]:
    latency = {"first_chunk_ms": first_chunk_ms, "chunk_gap_ms": 0}
    return {
        "name": name,
        "type": "simulated",
        "models": ["m"],
        "options": {"format": "openai", "words": 5, "latency": latency, **options},
    }


def most_at_once(attempts: list[Attempt]) -> int:
    edges = []
    for attempt in attempts:
        assert attempt.duration_ms is not None, attempt
        edges += [(attempt.started, 1), (attempt.started + attempt.duration_ms / 1000, -1)]
    running = peak = 0
    for _, step in sorted(edges):
        running += step
        peak = max(peak, running)
    return peak


async def test_a_stalled_first_provider_loses_to_the_hedge_and_is_closed(
    start_darkai: Start,
) -> None:
    slow, fast = await start_darkai(), await start_darkai()
    slow.default = Script(chunks=[], stall_after=0)  # headers, then nothing
    config = {"providers": [entry("slow", slow), entry("fast", fast)], "hedge": {"after_ms": 50}}
    with capture_logs() as logs:
        async with Router.from_config(config) as router:
            text, stream = await collect(router)
            await wait_closed(slow.requests[0], within=1.0)
    assert text == "Hello, world!"
    assert stream.provider == "fast"
    assert [(a.provider, a.outcome) for a in stream.attempts] == [
        ("slow", "hedge_lost"),
        ("fast", "ok"),
    ]
    names = [log["event"] for log in logs]
    assert names.index("attempt.hedge") < names.index("attempt.hedge_lost")
    hedge = next(log for log in logs if log["event"] == "attempt.hedge")
    assert hedge["provider"] == "fast"
    assert hedge["after_ms"] >= 50


async def test_hedge_at_p95_uses_the_fallback_before_any_observation(start_darkai: Start) -> None:
    slow, fast = await start_darkai(), await start_darkai()
    slow.default = Script(chunks=[], stall_after=0)
    hedge = {"after_ms": "p95", "p95_fallback_ms": 50}
    async with Router.from_config(
        {"providers": [entry("slow", slow), entry("fast", fast)], "hedge": hedge}
    ) as router:
        _, stream = await collect(router)
    assert stream.provider == "fast"


async def test_hedging_never_exceeds_max_parallel_under_500_concurrent_requests() -> None:
    config = {
        "providers": [sim("a", 60), sim("b", 60), sim("c", 0)],
        "hedge": {"after_ms": 5, "max_parallel": 2},
    }
    async with Router.from_config(config) as router:
        results = await asyncio.gather(*(collect(router, "m") for _ in range(500)))
        third = next(p for p in router.providers if p.entry_name == "c")
        assert isinstance(third, Simulated)
    streams = [stream for _, stream in results]
    assert all(stream.status == "complete" for stream in streams)
    assert max(most_at_once(stream.attempts) for stream in streams) == 2
    assert third.server.requests == 0  # a third request would have exceeded max_parallel
    assert sum(a.outcome == "hedge_lost" for s in streams for a in s.attempts) >= 250


def test_p95_of_recent_times_to_first_chunk() -> None:
    stats = EntryStats()
    assert stats.p95_ttft_ms() is None
    for ms in [10.0] * 95 + [500.0] * 5:
        stats.record_first_chunk(ms)
    assert stats.p95_ttft_ms() == 500.0


def ordered(order: str, book: StatsBook, names: list[str]) -> list[str]:
    from polyroute.providers import DarkAI
    from polyroute.router.policy import Entry

    entries = [Entry(DarkAI(name=n, working=True)) for n in names]
    policy = RoutingPolicy(entries, aliases={}, fallbacks={})
    state = MemoryState(InMemoryHealth(failures=9, seconds=1), book, limits={}, budget=None)
    candidates, _ = policy.candidates("gpt-4o", state, order)  # type: ignore[arg-type]
    return [c.name for c in candidates]


def test_latency_order_puts_fast_and_unmeasured_first_and_failing_last() -> None:
    book = StatsBook()
    book["slow"].record_first_chunk(800)
    book["fast"].record_first_chunk(50)
    book["broken"].record_failure()
    names = ["broken", "slow", "fast", "new"]
    assert ordered("priority", book, names) == names
    assert ordered("latency", book, names) == ["new", "fast", "slow", "broken"]
    assert math.isinf(book["broken"].latency_ms())


def test_adaptive_order_weighs_errors_and_throughput_with_priority_breaking_ties() -> None:
    book = StatsBook()
    for name in ("flaky", "steady", "twin"):
        book[name].record_first_chunk(100)
        book[name].record_success(1000, 1000)
    for _ in range(5):
        book["flaky"].record_failure()
    assert book["flaky"].expected_ms() > book["steady"].expected_ms()
    assert ordered("adaptive", book, ["flaky", "twin", "steady"]) == ["twin", "steady", "flaky"]


async def test_latency_order_learns_which_provider_is_faster() -> None:
    config = {"providers": [sim("slow", 80), sim("fast", 1)], "order": "latency"}
    async with Router.from_config(config) as router:
        served = [(await collect(router, "m"))[1].provider for _ in range(4)]
    # slow first (priority, nothing known), fast next (unmeasured), then fast: it is faster.
    assert served == ["slow", "fast", "fast", "fast"]
