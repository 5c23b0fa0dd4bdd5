"""Routing decisions against real local DarkAI-format upstreams."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from structlog.testing import capture_logs

from polyroute import (
    AllProvidersFailed,
    InvalidMessagesError,
    ModelNotSupportedError,
    Router,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from polyroute.providers import DarkAI, Registry
from tests.router.helpers import HI, FakeSleep, collect, entry, router_for
from tests.upstreams.darkai import DarkAIUpstream, encode_events, text_event
from tests.upstreams.scripted import Script

Start = Callable[[], Awaitable[DarkAIUpstream]]


async def test_router_alias_resolves_before_provider_aliases(start_darkai: Start) -> None:
    server = await start_darkai()
    async with router_for(entry("dark", server), aliases={"smart": "llama-3.1-70b"}) as router:
        text, stream = await collect(router, "smart")
    assert text == "Hello, world!"
    assert (stream.provider, stream.model) == ("dark", "llama-3-70b")
    assert server.requests[0].body["model"] == "llama-3-70b"


async def test_unknown_model_lists_what_the_router_serves(start_darkai: Start) -> None:
    server = await start_darkai()
    async with router_for(entry("dark", server), aliases={"smart": "gpt-4o"}) as router:
        with pytest.raises(ModelNotSupportedError, match="claude") as caught:
            router.stream("claude", HI)
    assert caught.value.supported == [
        "gpt-3.5-turbo",
        "gpt-4o",
        "llama-3-70b",
        "llama-3.1-70b",
        "smart",
    ]
    assert server.requests == []


async def test_invalid_messages_raise_before_any_request(start_darkai: Start) -> None:
    server = await start_darkai()
    async with router_for(entry("dark", server)) as router:
        with pytest.raises(InvalidMessagesError):
            router.stream("gpt-4o", [{"role": "user"}])
    assert server.requests == []


async def test_priority_orders_candidates_and_ties_keep_list_order(start_darkai: Start) -> None:
    a, b, c = await start_darkai(), await start_darkai(), await start_darkai()
    router = router_for(entry("a", a, priority=5), entry("b", b), entry("c", c))
    async with router:
        assert [p.entry_name for p in router.providers] == ["b", "c", "a"]
        _, stream = await collect(router)
    assert stream.provider == "b"
    assert (len(a.requests), len(b.requests), len(c.requests)) == (0, 1, 0)


async def test_not_working_and_non_streaming_entries_are_skipped_with_reasons(
    start_darkai: Start,
) -> None:
    server = await start_darkai()

    class NoStream(DarkAI):
        supports_stream = False

    registry = Registry({"darkai": DarkAI, "nostream": NoStream})
    config = {
        "providers": [
            {
                "name": "off",
                "type": "darkai",
                "api_endpoint": server.url,
            },  # DarkAI ships working=False
            {"name": "flat", "type": "nostream", "api_endpoint": server.url, "working": True},
        ]
    }
    async with Router.from_config(config, registry=registry) as router:
        with pytest.raises(AllProvidersFailed) as caught:
            await collect(router)
    assert caught.value.reasons == ["off (gpt-4o): not working", "flat (gpt-4o): cannot stream"]
    assert "off (gpt-4o): not working" in str(caught.value)
    assert caught.value.attempts == []
    assert server.requests == []


async def test_non_retryable_error_moves_to_the_next_provider_without_sleeping(
    start_darkai: Start,
) -> None:
    bad, good = await start_darkai(), await start_darkai()
    bad.default = Script(status=400)
    sleep = FakeSleep()
    async with router_for(entry("bad", bad), entry("good", good), sleep=sleep) as router:
        text, stream = await collect(router)
    assert text == "Hello, world!"
    assert stream.provider == "good"
    assert [(a.provider, a.outcome) for a in stream.attempts] == [("bad", "failed"), ("good", "ok")]
    assert isinstance(stream.attempts[0].error, UpstreamStatusError)
    assert len(bad.requests) == 1
    assert sleep.delays == []


async def test_fallback_chain_is_tried_after_every_provider_of_the_model(
    start_darkai: Start,
) -> None:
    four, llama = await start_darkai(), await start_darkai()
    four.default = Script(status=404)
    config = [entry("four", four, models=["gpt-4o"]), entry("llama", llama, models=["llama-3-70b"])]
    with capture_logs() as logs:
        async with router_for(*config, fallbacks={"gpt-4o": ["llama-3-70b"]}) as router:
            text, stream = await collect(router)
    assert text == "Hello, world!"
    assert (stream.provider, stream.model) == ("llama", "llama-3-70b")
    assert "route.next_provider" not in [log["event"] for log in logs]
    fallback = next(log for log in logs if log["event"] == "route.fallback")
    assert (fallback["from_provider"], fallback["from_model"]) == ("four", "gpt-4o")
    assert (fallback["to_provider"], fallback["to_model"]) == ("llama", "llama-3-70b")


async def test_fallback_model_can_be_a_router_alias(start_darkai: Start) -> None:
    server = await start_darkai()
    config = entry("llama", server, models=["llama-3-70b"])
    async with router_for(
        config, aliases={"cheap": "llama-3-70b"}, fallbacks={"gpt-4o": ["cheap"]}
    ) as router:
        _, stream = await collect(router, "gpt-4o")
    assert stream.model == "llama-3-70b"


async def test_all_providers_failed_lists_every_attempt(start_darkai: Start) -> None:
    a, b = await start_darkai(), await start_darkai()
    a.default = Script(status=403, error_body="forbidden")
    b.default = Script(raw=b"data: nonsense\n\n")
    async with router_for(
        entry("a", a), entry("b", b), fallbacks={"gpt-4o": ["llama-3-70b"]}
    ) as router:
        with pytest.raises(AllProvidersFailed) as caught:
            await collect(router)
    error = caught.value
    assert [(t.provider, t.model, type(t.error).__name__) for t in error.attempts] == [
        ("a", "gpt-4o", "AuthenticationError"),
        ("b", "gpt-4o", "UpstreamProtocolError"),
        ("a", "llama-3-70b", "AuthenticationError"),
        ("b", "llama-3-70b", "UpstreamProtocolError"),
    ]
    message = str(error)
    assert "all providers failed for model 'gpt-4o'" in message
    assert f"  - a (gpt-4o): HTTP 403 from {a.url}: forbidden\n" in message
    assert "  - b (llama-3-70b): malformed event" in message


async def test_failure_after_text_raises_with_the_partial_text(start_darkai: Start) -> None:
    first, second = await start_darkai(), await start_darkai()
    first.default = Script(chunks=["Hel", "lo"], end=False)
    received: list[str] = []
    config = [entry("first", first), entry("second", second)]
    async with router_for(*config, on_midstream_failure="raise") as router:
        stream = router.stream("gpt-4o", HI)

        async def consume() -> None:
            async for text in stream:
                received.append(text)

        with pytest.raises(UpstreamProtocolError, match="stream ended before stream-end"):
            await consume()
    assert received == ["Hel", "lo"]
    assert stream.text == "Hello"
    assert stream.provider == "first"
    assert stream.attempts[-1].outcome == "failed"
    assert second.requests == []


async def test_complete_returns_the_whole_text(start_darkai: Start) -> None:
    server = await start_darkai()
    async with router_for(entry("dark", server), aliases={"smart": "gpt-4o"}) as router:
        assert await router.complete_text("smart", HI) == "Hello, world!"


async def test_empty_answer_is_a_success(start_darkai: Start) -> None:
    server = await start_darkai()
    server.default = Script(chunks=[])
    async with router_for(entry("dark", server)) as router:
        text, stream = await collect(router)
    assert text == ""
    assert stream.attempts[0].outcome == "ok"


async def test_events_trace_one_request_with_one_request_id(start_darkai: Start) -> None:
    bad, good = await start_darkai(), await start_darkai()
    bad.default = Script(status=500)
    with capture_logs() as logs:
        async with router_for(
            entry("bad", bad), entry("good", good), retry={"attempts": 2}
        ) as router:
            await collect(router, "gpt-4o")
    names = [log["event"] for log in logs]
    assert names == [
        "route.start",
        "attempt.start",
        "attempt.failed",
        "attempt.retry",
        "attempt.start",
        "attempt.failed",
        "route.next_provider",  # the same model on another entry: not a model fallback
        "attempt.start",
        "stream.first_chunk",
        "route.done",
    ]
    assert len({log["request_id"] for log in logs}) == 1
    start = logs[0]
    assert (start["requested_model"], start["model"], start["candidates"]) == (
        "gpt-4o",
        "gpt-4o",
        ["bad", "good"],
    )
    failed = logs[2]
    assert (failed["error_type"], failed["retryable"], failed["provider"]) == (
        "UpstreamStatusError",
        True,
        "bad",
    )
    retry = logs[3]
    assert (retry["retry"], retry["retries"]) == (1, 1)
    done = logs[-1]
    assert (done["provider"], done["chunks"], done["chars"], done["attempts"]) == (
        "good",
        4,
        13,
        3,
    )
    assert logs[-2]["ttft_ms"] >= 0
    assert all("Hi" not in str(log.values()) for log in logs)  # no message text in events


async def test_a_darkai_error_event_is_relayed_to_the_next_entry(start_darkai: Start) -> None:
    first, second = await start_darkai(), await start_darkai()
    error = {"event": "error", "data": {"message": "capacity"}}
    first.default = Script(raw=encode_events([text_event("Hello, "), error]))
    second.default = Script(chunks=["Hello, ", "world", "!"])
    async with router_for(entry("a", first), entry("b", second)) as router:
        text, stream = await collect(router)
    assert text == "Hello, world!"
    assert stream.status == "switched"
    assert "capacity" in str(stream.attempts[0].error)
