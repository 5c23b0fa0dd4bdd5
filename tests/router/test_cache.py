"""The exact response cache: replays without the upstream, keys, refresh, what is
never stored, and the memory backend's bounds (bytes, time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from polyroute import Router, TextDelta, ToolCall, ToolCallDelta
from polyroute.core.errors import AllProvidersFailed, InvalidRequestError, UpstreamError
from polyroute.router.cache import MemoryCache, RedisCache
from polyroute.router.config import CacheConfig, load_config
from tests.clock import Clock
from tests.router.helpers import HI
from tests.server.helpers import free_port
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.usefixtures("chunk_path")  # decoded, and relayed as it came

CALL = ToolCall("call_w", "get_weather", '{"city": "Paris"}')
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


def router(server: OpenAIUpstream, **settings: Any) -> Router:
    entries = [
        {"name": "a", "type": "openai", "base_url": server.base_url, "models": ["m", "other"]}
    ]
    config: dict[str, Any] = {"providers": entries, "retry": {"attempts": 1}}
    config.setdefault("cache", {"backend": "memory"})
    return Router.from_config({**config, **settings})


async def answer(r: Router, model: str = "m", **options: Any) -> tuple[list[Any], Any]:
    async with r.stream(model, HI, **options) as stream:
        deltas = [delta async for delta in stream.deltas()]
    assert r.cache is not None
    await r.cache.settle()
    return deltas, stream


async def test_a_hit_replays_text_without_calling_the_upstream(
    openai_upstream: OpenAIUpstream,
) -> None:
    async with router(openai_upstream) as r:
        _, first = await answer(r, cache="use")
        _, second = await answer(r, cache="use")
        async with r.stream("m", HI, cache="use") as third:
            texts = [text async for text in third]
    assert (first.cache, second.cache, third.cache) == ("miss", "hit", "hit")
    assert len(openai_upstream.requests) == 1
    assert second.text == third.text == first.text == "Hello, world!"
    assert texts == ["Hello, world!"]
    assert (second.provider, second.model, second.status) == ("a", "m", "complete")
    assert second.attempts == []
    assert second.finish_reason == "stop"
    assert second.usage is not None
    assert second.usage.details["cached"] is True
    assert second.usage.total_tokens == first.usage.total_tokens


async def test_a_hit_replays_whole_tool_calls_and_one_batch(
    openai_upstream: OpenAIUpstream,
) -> None:
    start = {
        "tool_calls": [
            {"index": 0, "id": CALL.id, "type": "function", "function": {"name": CALL.name}}
        ]
    }
    pieces = [
        {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}
        for p in ('{"city"', ': "Paris"}')
    ]
    openai_upstream.default = Script(chunks=[start, *pieces], finish_reason="tool_calls")
    async with router(openai_upstream) as r:
        _, first = await answer(r, cache="use", tools=TOOLS)
        deltas, second = await answer(r, cache="use", tools=TOOLS)
        async with r.stream("m", HI, cache="use", tools=TOOLS) as third:
            batches = [batch async for batch in third.delta_batches()]
    assert len(openai_upstream.requests) == 1
    assert first.message.tool_calls == [CALL]
    assert second.message.tool_calls == [CALL]
    assert second.message.content is None
    assert ToolCallDelta(0, id=CALL.id, name=CALL.name, arguments=CALL.arguments) in deltas
    assert second.finish_reason == "tool_calls"
    assert len(batches) == 1
    assert third.cache == "hit"
    assert third.message.tool_calls == [CALL]


async def test_an_alias_and_its_target_share_an_entry(openai_upstream: OpenAIUpstream) -> None:
    async with router(openai_upstream, aliases={"nick": "m"}) as r:
        await answer(r, "nick", cache="use")
        _, second = await answer(r, "m", cache="use")
    assert second.cache == "hit"
    assert len(openai_upstream.requests) == 1


async def test_a_different_option_or_model_misses(openai_upstream: OpenAIUpstream) -> None:
    async with router(openai_upstream) as r:
        await answer(r, cache="use", temperature=0.5)
        _, warmer = await answer(r, cache="use", temperature=0.9)
        _, other = await answer(r, "other", cache="use", temperature=0.5)
        _, same = await answer(r, cache="use", temperature=0.5)
    assert (warmer.cache, other.cache, same.cache) == ("miss", "miss", "hit")
    assert len(openai_upstream.requests) == 3


async def test_refresh_calls_the_upstream_and_replaces_the_entry(
    openai_upstream: OpenAIUpstream,
) -> None:
    async with router(openai_upstream) as r:
        await answer(r, cache="use")
        openai_upstream.default = Script(chunks=["Fresh"])
        _, refreshed = await answer(r, cache="refresh")
        _, replayed = await answer(r, cache="use")
    assert refreshed.cache == "refresh"
    assert refreshed.text == "Fresh"
    assert len(openai_upstream.requests) == 2
    assert (replayed.cache, replayed.text) == ("hit", "Fresh")


async def test_off_and_no_mode_neither_read_nor_store(openai_upstream: OpenAIUpstream) -> None:
    async with router(openai_upstream) as r:
        _, off = await answer(r, cache="off")
        _, unsaid = await answer(r)
        assert isinstance(r.cache, MemoryCache)
        assert len(r.cache) == 0
    assert (off.cache, unsaid.cache) == (None, None)
    with pytest.raises(InvalidRequestError, match="cache must be"):
        router(openai_upstream).stream("m", HI, cache="always")


async def test_without_a_configured_cache_the_mode_is_off(openai_upstream: OpenAIUpstream) -> None:
    async with router(openai_upstream, cache=None) as r:
        assert r.cache is None
        async with r.stream("m", HI, cache="use") as stream:
            [_ async for _ in stream]
    assert stream.cache is None


async def test_per_model_mode_applies_when_the_request_says_none(
    openai_upstream: OpenAIUpstream,
) -> None:
    async with router(openai_upstream, per_model={"m": {"cache": "use"}}) as r:
        await answer(r)
        _, second = await answer(r)
        _, other = await answer(r, "other")
        assert r.route_settings("m").on_midstream_failure == "continue"
    assert (second.cache, other.cache) == ("hit", None)
    assert len(openai_upstream.requests) == 2


async def test_a_truncated_or_failed_answer_is_never_stored(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.then(Script(reset_after=2), Script(status=500))
    async with router(openai_upstream, on_midstream_failure="raise") as r:
        with pytest.raises(UpstreamError):
            await answer(r, cache="use")
        with pytest.raises(AllProvidersFailed):
            await answer(r, cache="use")
        assert isinstance(r.cache, MemoryCache)
        await r.cache.settle()
        assert len(r.cache) == 0
        _, third = await answer(r, cache="use")
    assert third.cache == "miss"
    assert third.text == "Hello, world!"


async def test_a_replay_delivers_text_deltas_in_order(openai_upstream: OpenAIUpstream) -> None:
    async with router(openai_upstream) as r:
        await answer(r, cache="use")
        deltas, _ = await answer(r, cache="use")
    assert [type(d).__name__ for d in deltas] == ["TextDelta", "FinishDelta", "UsageDelta"]
    assert deltas[0] == TextDelta("Hello, world!")


async def test_the_memory_cache_evicts_the_least_recently_used_past_max_bytes() -> None:
    cache = MemoryCache(CacheConfig(max_bytes=25, max_entry_bytes=20))
    await cache.put("a", b"x" * 10)
    await cache.put("b", b"y" * 10)
    assert await cache.get("a") == b"x" * 10  # a is now the most recent
    await cache.put("c", b"z" * 10)
    assert await cache.get("b") is None
    assert await cache.get("a") is not None
    assert await cache.get("c") is not None
    assert cache.bytes == 20
    await cache.put("big", b"!" * 21)
    assert await cache.get("big") is None
    assert cache.dropped == 1


async def test_the_memory_cache_forgets_an_entry_after_its_ttl() -> None:
    clock = Clock(now=0.0)
    cache = MemoryCache(CacheConfig(ttl_s=10), clock=clock)
    await cache.put("a", b"answer")
    clock.now = 9.9
    assert await cache.get("a") == b"answer"
    clock.now = 10.0
    assert await cache.get("a") is None
    assert cache.bytes == 0


def test_the_configuration_in_the_docs_loads() -> None:
    text = (Path(__file__).parents[2] / "docs" / "cache.md").read_text()
    (block,) = [part.split("```")[0] for part in text.split("```yaml\n")[1:]]
    config = load_config(yaml.safe_load(block))
    assert config.cache is not None
    assert (config.cache.backend, config.cache.ttl_s) == ("memory", 3600)
    assert config.per_model["draft"].cache == "use"
    assert config.for_model("draft").model_fields_set.isdisjoint({"cache"})


async def test_an_unreachable_redis_is_a_miss_and_a_skipped_store_logged_once() -> None:
    cache = RedisCache(CacheConfig(backend="redis"), f"redis://127.0.0.1:{free_port()}/0")
    with capture_logs() as logs:
        assert await cache.get("a") is None
        await cache.put("a", b"answer")
        assert await cache.get("a") is None
    await cache.aclose()
    assert [log["event"] for log in logs] == ["cache.unavailable"]
    assert logs[0]["op"] == "get"


async def test_a_restarted_answer_is_not_stored_but_a_switched_one_is(
    openai_upstream: OpenAIUpstream,
) -> None:
    backup = await OpenAIUpstream().start()
    entries = [
        {"name": "a", "type": "openai", "base_url": openai_upstream.base_url, "models": ["m"]},
        {"name": "b", "type": "openai", "base_url": backup.base_url, "models": ["m"]},
    ]
    try:
        for relay, stored in (("restart", 0), ("continue", 1)):
            openai_upstream.then(Script(reset_after=2))
            r = Router.from_config(
                {
                    "providers": entries,
                    "retry": {"attempts": 1},
                    "cache": {},
                    "on_midstream_failure": relay,
                }
            )
            async with r:
                _, stream = await answer(r, cache="use")
                assert isinstance(r.cache, MemoryCache)
                assert (stream.status, len(r.cache)) == (
                    "restarted" if relay == "restart" else "switched",
                    stored,
                )
    finally:
        await backup.stop()
