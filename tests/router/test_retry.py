"""Retries on one provider: counts, backoff, Retry-After. The sleep function is faked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from structlog.testing import capture_logs
from tenacity import RetryCallState

from polyroute import AllProvidersFailed, RateLimitedError, RetryConfig
from polyroute.router.retry import RetryPolicy
from tests.router.helpers import FakeSleep, collect, entry, router_for
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.scripted import Script

Start = Callable[[], Awaitable[DarkAIUpstream]]


async def test_retryable_errors_are_retried_up_to_attempts(start_darkai: Start) -> None:
    server = await start_darkai()
    server.then(Script(status=503), Script(status=502))
    sleep = FakeSleep()
    async with router_for(entry("dark", server), retry={"attempts": 3}, sleep=sleep) as router:
        text, stream = await collect(router)
    assert text == "Hello, world!"
    assert [a.outcome for a in stream.attempts] == ["failed", "failed", "ok"]
    assert len(server.requests) == 3
    assert len(sleep.delays) == 2


async def test_attempts_bound_the_tries_then_the_router_gives_up(start_darkai: Start) -> None:
    server = await start_darkai()
    server.default = Script(status=500)
    async with router_for(entry("dark", server), retry={"attempts": 2}) as router:
        with pytest.raises(AllProvidersFailed) as caught:
            await collect(router)
    assert len(caught.value.attempts) == 2
    assert len(server.requests) == 2


async def test_attempts_one_disables_retries(start_darkai: Start) -> None:
    server = await start_darkai()
    server.default = Script(status=503)
    sleep = FakeSleep()
    async with router_for(entry("dark", server), retry={"attempts": 1}, sleep=sleep) as router:
        with pytest.raises(AllProvidersFailed):
            await collect(router)
    assert len(server.requests) == 1
    assert sleep.delays == []


async def test_backoff_grows_exponentially_with_bounded_jitter(start_darkai: Start) -> None:
    server = await start_darkai()
    server.default = Script(status=503)
    sleep = FakeSleep()
    retry = {"attempts": 5, "backoff_initial": 0.5, "backoff_max": 3}
    cooldown = {"failures": 10}
    async with router_for(
        entry("dark", server), retry=retry, cooldown=cooldown, sleep=sleep
    ) as router:
        with pytest.raises(AllProvidersFailed):
            await collect(router)
    low = [0.5, 1.0, 2.0, 3.0]
    assert len(sleep.delays) == 4
    for delay, floor in zip(sleep.delays, low, strict=True):
        assert floor <= delay <= min(3.0, floor + 0.5)


@pytest.mark.parametrize("header", ["2", "Wed, 21 Oct 2099 07:28:00 GMT"])
async def test_retry_after_is_honoured(start_darkai: Start, header: str) -> None:
    server = await start_darkai()
    server.then(Script(status=429, headers={"Retry-After": header}))
    sleep = FakeSleep()
    retry = {"attempts": 2, "max_retry_after": 10**10}
    with capture_logs() as logs:
        async with router_for(entry("dark", server), retry=retry, sleep=sleep) as router:
            text, _ = await collect(router)
    assert text == "Hello, world!"
    if header == "2":
        assert sleep.delays == [2.0]
    else:
        assert sleep.delays[0] > 10**6  # an HTTP-date far ahead
    retry_event = next(log for log in logs if log["event"] == "attempt.retry")
    assert retry_event["error_type"] == "RateLimitedError"
    assert retry_event["delay_s"] == round(sleep.delays[0], 3)


async def test_retry_after_longer_than_the_cap_moves_on_without_waiting(
    start_darkai: Start,
) -> None:
    limited, other = await start_darkai(), await start_darkai()
    limited.default = Script(status=429, headers={"Retry-After": "120"})
    sleep = FakeSleep()
    retry = {"attempts": 3, "max_retry_after": 30}
    async with router_for(
        entry("limited", limited), entry("other", other), retry=retry, sleep=sleep
    ) as router:
        _, stream = await collect(router)
    assert stream.provider == "other"
    assert isinstance(stream.attempts[0].error, RateLimitedError)
    assert len(limited.requests) == 1
    assert sleep.delays == []


def test_delay_prefers_retry_after_over_backoff() -> None:
    policy = RetryPolicy(RetryConfig(backoff_initial=1, backoff_max=8))
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = 3
    state.set_exception((RateLimitedError, RateLimitedError(429, retry_after=0.25), None))
    assert policy.delay(state) == 0.25
    state.set_exception((RateLimitedError, RateLimitedError(429), None))
    assert 4 <= policy.delay(state) <= 5
