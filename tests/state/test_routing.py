"""The router's use of its state, on both backends: entries without headroom are
skipped before they are called, the retry budget stops extra attempts, and entries of
equal priority are balanced."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from polyroute import AllProvidersFailed, Router
from polyroute.providers import DarkAI
from polyroute.router.policy import Entry, RoutingPolicy
from polyroute.router.state import Lease
from tests.router.helpers import HI, FakeSleep, collect, entry
from tests.router.test_openai_routing import openai_entry
from tests.state.helpers import make_state
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

Start = Callable[[], Awaitable[DarkAIUpstream]]


@pytest.fixture(params=["memory", "redis"])
def state_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {"backend": "memory"}
    return {"backend": "redis", "url": request.getfixturevalue("redis_url")}


def _router(state: dict[str, Any], *entries: dict[str, Any], **settings: Any) -> Router:
    config = {"providers": list(entries), "state": state, **settings}
    return Router.from_config(config, sleep=FakeSleep())


async def test_an_entry_over_its_rpm_is_skipped_before_it_is_called(
    start_darkai: Start, state_config: dict[str, Any]
) -> None:
    limited, spare = await start_darkai(), await start_darkai()
    providers = [entry("limited", limited, limits={"rpm": 2}), entry("spare", spare)]
    async with _router(state_config, *providers) as router:
        with capture_logs() as logs:
            served = [(await collect(router))[1].provider for _ in range(3)]
    assert served == ["limited", "limited", "spare"]
    assert len(limited.requests) == 2
    skips = [log for log in logs if log["event"] == "route.skip"]
    assert [(s["provider"], s["reason"]) for s in skips] == [("limited", "rpm limit 2 reached")]
    assert 59 < skips[0]["retry_in_s"] <= 60


async def test_no_headroom_anywhere_fails_with_the_reasons(
    start_darkai: Start, state_config: dict[str, Any]
) -> None:
    server = await start_darkai()
    async with _router(state_config, entry("only", server, limits={"rpm": 1})) as router:
        await collect(router)
        with pytest.raises(AllProvidersFailed, match=r"only \(gpt-4o\): skipped: rpm limit 1"):
            await collect(router)
    assert len(server.requests) == 1


async def test_tokens_reported_by_the_answer_correct_the_estimate(
    openai_upstream: OpenAIUpstream, state_config: dict[str, Any]
) -> None:
    openai_upstream.default = Script(
        usage={"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    )
    # The estimate (prompt/4 + max_tokens 500) fits once in 1000 tokens a minute; the
    # 10 tokens each answer reports let the next ones through.
    entries = [openai_entry("a", openai_upstream, limits={"tpm": 1000})]
    async with _router(state_config, *entries) as router:
        for _ in range(5):
            _, stream = await collect(router, max_tokens=500)
            assert stream.provider == "a"
            assert stream.usage.total_tokens == 10
        openai_upstream.default = Script(stall_after=1)
        async with router.stream("gpt-4o", HI, max_tokens=500) as running:
            assert await running.__anext__()
            # Its answer has not said how many tokens it used: its estimate holds.
            with pytest.raises(AllProvidersFailed, match="tpm limit 1000 reached"):
                await collect(router, max_tokens=500)


async def test_retry_budget_stops_extra_attempts_cluster_wide(
    start_darkai: Start, state_config: dict[str, Any]
) -> None:
    servers = [await start_darkai() for _ in range(3)]
    for server in servers:
        server.default = Script(status=503)
    providers = [entry(f"p{i}", server) for i, server in enumerate(servers)]
    budget = {"ratio": 0.0, "min_per_second": 0.1, "window_seconds": 10}  # one extra attempt
    async with _router(state_config, *providers, retry={"attempts": 1, "budget": budget}) as router:
        with capture_logs() as logs, pytest.raises(AllProvidersFailed) as caught:
            await collect(router)
    assert [len(server.requests) for server in servers] == [1, 1, 0]
    assert "retry budget exhausted" in str(caught.value)
    exhausted = [log for log in logs if log["event"] == "retry.budget_exhausted"]
    assert [log["provider"] for log in exhausted] == ["p2"]


async def test_least_busy_prefers_the_entry_with_fewer_in_flight(
    start_darkai: Start, state_config: dict[str, Any]
) -> None:
    a, b = await start_darkai(), await start_darkai()
    async with _router(state_config, entry("a", a), entry("b", b), balance="least_busy") as router:
        held = await router.state.acquire("a", lambda: 0)  # as if a request were on a
        assert isinstance(held, Lease)
        assert (await collect(router))[1].provider == "b"
        held.end()
        busy = [await router.state.acquire("b", lambda: 0) for _ in range(2)]
        assert (await collect(router))[1].provider == "a"
        for lease in busy:
            assert isinstance(lease, Lease)
            lease.end()


def _entries(*specs: tuple[str, int, float]) -> list[Entry]:
    return [
        Entry(DarkAI(name=name, working=True), priority, weight=weight)
        for name, priority, weight in specs
    ]


def test_weighted_balance_picks_by_weight_within_a_priority() -> None:
    random.seed(7)
    state = make_state("memory")
    policy = RoutingPolicy(
        _entries(("heavy", 0, 3.0), ("light", 0, 1.0), ("backup", 1, 100.0)),
        aliases={},
        fallbacks={},
    )
    firsts: Counter[str] = Counter()
    for _ in range(4000):
        chosen, _ = policy.candidates("gpt-4o", state, balance="weighted")
        firsts[chosen[0].name] += 1
        assert chosen[-1].name == "backup"  # a lower priority never jumps ahead
    assert 0.72 < firsts["heavy"] / 4000 < 0.78


def test_latency_balance_puts_the_faster_first_within_a_priority() -> None:
    state = make_state("memory")
    state.stats["slow"].record_first_chunk(300)
    state.stats["fast"].record_first_chunk(20)
    state.stats["later"].record_first_chunk(1)
    policy = RoutingPolicy(
        _entries(("slow", 0, 1.0), ("fast", 0, 1.0), ("later", 1, 1.0)),
        aliases={},
        fallbacks={},
    )
    chosen, _ = policy.candidates("gpt-4o", state, balance="latency")
    assert [c.name for c in chosen] == ["fast", "slow", "later"]
    chosen, _ = policy.candidates("gpt-4o", state)
    assert [c.name for c in chosen] == ["slow", "fast", "later"]


async def test_an_upstream_saying_it_has_nothing_left_is_skipped_until_its_reset(
    start_darkai: Start, state_config: dict[str, Any]
) -> None:
    tight, spare = await start_darkai(), await start_darkai()
    tight.default = Script(
        headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}
    )
    async with _router(state_config, entry("tight", tight), entry("spare", spare)) as router:
        with capture_logs() as logs:
            served = [(await collect(router))[1].provider for _ in range(3)]
    assert served == ["tight", "spare", "spare"]  # its answer said: no more for 6 minutes
    assert len(tight.requests) == 1
    limited = [log for log in logs if log["event"] == "provider.rate_limited"]
    assert [(log["provider"], log["seconds"]) for log in limited] == [("tight", 360.0)]
    skips = [log["reason"] for log in logs if log["event"] == "route.skip"]
    assert skips == ["upstream reports no requests or tokens left"] * 2
