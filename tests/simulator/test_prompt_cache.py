"""A simulated upstream's prompt cache: prefixes cached per upstream, reported in usage
as OpenAI and Anthropic report them (read through the real providers), a first chunk
sooner on a hit; and the Anthropic wire format it speaks for that."""

from __future__ import annotations

import time
from typing import Any

from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from polyroute import ReasoningDelta, Router, TextDelta, Usage, UsageDelta
from polyroute.core.http import SessionOwner
from polyroute.core.sse import SSEDecoder
from polyroute.providers import Anthropic, OpenAI
from polyroute.simulator.prefix_cache import PrefixCache, prompt_text
from polyroute.simulator.profile import PromptCache, SimulatedUpstream
from polyroute.simulator.server import SimulatorServer
from polyroute.simulator.text import simulated_words

SYSTEM = "You answer questions about the sea, in full sentences. " * 40  # 2,200 chars
FAST = {"first_chunk_ms": 0, "chunk_gap_ms": 0}
SMALL = {"min_tokens": 256, "step_tokens": 64, "ms_per_1k_uncached": 0}


def turns(n: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tides?"}]
    for k in range(n):
        messages += [
            {"role": "assistant", "content": f"Answer {k}."},
            {"role": "user", "content": f"More {k}?"},
        ]
    return messages


async def start(
    started: list[SimulatorServer], wire: str, cache: dict[str, Any] | None = None, **more: Any
) -> SimulatorServer:
    profile = SimulatedUpstream(
        name="sim",
        format=wire,  # type: ignore[arg-type]
        words=4,
        latency=more.pop("latency", FAST),
        prompt_cache=SMALL if cache is None else cache,  # type: ignore[arg-type]
        **more,
    )
    server = await SimulatorServer(profile).start()
    started.append(server)
    return server


async def usage_of(provider: OpenAI | Anthropic, messages: Any) -> Usage:
    deltas = [delta async for delta in provider.stream("m", messages)]
    usages = [delta.usage for delta in deltas if isinstance(delta, UsageDelta)]
    total = usages[0]
    for usage in usages[1:]:
        total = total + usage
    return total


def test_the_longest_cached_prefix_counts_in_steps_and_expires_after_ttl_idle() -> None:
    now = [0.0]
    cache = PrefixCache(PromptCache(min_tokens=100, step_tokens=10, ttl_s=60), lambda: now[0])
    short = "x" * (99 * 4)
    assert cache.read(short) == (99, 0, 0)  # under min_tokens: never cached
    first = "a" * 1000  # 250 tokens
    assert cache.read(first) == (250, 0, 250)
    longer = first + "b" * 205  # 302 tokens: the first 250 are a cached prefix
    assert cache.read(longer) == (302, 250, 50)
    assert cache.read(longer) == (302, 300, 0)  # in steps of 10 from 100
    other = "c" + first[1:]  # another prompt from its first character on
    assert cache.read(other).cached_tokens == 0
    now[0] += 59
    assert cache.read(longer).cached_tokens == 300  # read: idle from now
    now[0] += 60
    assert cache.read(longer).cached_tokens == 0
    bounded = PrefixCache(PromptCache(min_tokens=1, step_tokens=1, max_prefixes=5))
    bounded.read("y" * 400)
    assert len(bounded) == 5


def test_the_prompt_text_of_a_later_turn_starts_with_the_earlier_ones() -> None:
    tools = [{"type": "function", "function": {"name": "tide"}}]
    earlier = prompt_text(tools, [("system", "s"), ("user", "q")])
    later = prompt_text(tools, [("system", "s"), ("user", "q"), ("assistant", "a"), ("user", "r")])
    assert later.startswith(earlier)


async def test_openai_format_reports_cached_tokens_as_openai_does(
    started: list[SimulatorServer],
) -> None:
    server = await start(started, "openai")
    async with OpenAI(api_endpoint=server.url, models=[]) as provider:
        cold = await usage_of(provider, turns(0))
        warm = await usage_of(provider, turns(3))
    assert cold.prompt_tokens == server.cache_reads[0].prompt_tokens > 550
    assert cold.cache_read_tokens == 0
    assert cold.details == {"prompt_tokens_details": {"cached_tokens": 0}}
    read = server.cache_reads[1]
    assert warm.prompt_tokens == read.prompt_tokens
    assert warm.cache_read_tokens == read.cached_tokens
    assert read.cached_tokens >= cold.prompt_tokens - 64  # all but the last step
    assert warm.completion_tokens == 5  # the tag and 4 words


async def test_anthropic_format_reports_cache_reads_and_writes_as_anthropic_does(
    started: list[SimulatorServer],
) -> None:
    server = await start(started, "anthropic")
    async with Anthropic(base_url=server.base_url, api_key="sk-ant-sim-0123456789") as provider:
        cold = await usage_of(provider, turns(0))
        warm = await usage_of(provider, turns(2))
    first, second = server.cache_reads
    assert (cold.prompt_tokens, cold.cache_read_tokens) == (first.prompt_tokens, 0)
    assert cold.cache_write_tokens == first.written_tokens > 0
    assert warm.prompt_tokens == second.prompt_tokens  # input + reads + writes, as OpenAI's
    assert warm.cache_read_tokens == second.cached_tokens > 0
    assert warm.details["cache_read_input_tokens"] == second.cached_tokens
    assert warm.completion_tokens == 5


async def test_anthropic_format_events_are_the_sdks_own_types(
    started: list[SimulatorServer],
) -> None:
    server = await start(started, "anthropic", cache={})
    owner = SessionOwner()
    body = {"model": "m", "max_tokens": 64, "stream": True, "messages": turns(0)[1:]}
    async with owner.session.post(server.url, json=body) as response:
        raw = await response.read()
    await owner.aclose()
    events = SSEDecoder().feed(raw)
    adapter = TypeAdapter(RawMessageStreamEvent)
    for event in events:
        adapter.validate_json(event.data)
    assert [event.event for event in events][:2] == ["message_start", "content_block_start"]
    assert events[-1].event == "message_stop"


async def test_each_upstream_has_its_own_cache(started: list[SimulatorServer]) -> None:
    one, two = await start(started, "openai"), await start(started, "openai")
    async with (
        OpenAI(api_endpoint=one.url, models=[]) as first,
        OpenAI(api_endpoint=two.url, models=[]) as second,
    ):
        await usage_of(first, turns(0))
        assert (await usage_of(first, turns(1))).cache_read_tokens > 0
        assert (await usage_of(second, turns(1))).cache_read_tokens == 0  # cold there


async def test_a_hit_gets_its_first_chunk_sooner(started: list[SimulatorServer]) -> None:
    cache = {**SMALL, "ms_per_1k_uncached": 600}  # the ~560-token prompt: 340 ms cold
    server = await start(started, "openai", cache=cache)

    async def first_chunk_s(messages: Any) -> float:
        began = time.perf_counter()
        async for delta in provider.stream("m", messages):
            if isinstance(delta, TextDelta | ReasoningDelta):
                return time.perf_counter() - began
        raise AssertionError("no text")

    async with OpenAI(api_endpoint=server.url, models=[]) as provider:
        cold = await first_chunk_s(turns(0))
        hit = await first_chunk_s(turns(0))
    assert server.cache_reads[1].cached_tokens > 0
    assert cold > 0.3
    assert hit < cold - 0.2


async def test_an_anthropic_format_simulator_continues_an_openai_one_to_the_character(
    started: list[SimulatorServer],
) -> None:
    """The same words for the same conversation in every format: a relay is exact."""
    options = {"words": 12, "latency": FAST}
    config = {
        "providers": [
            {"name": "a", "type": "simulated", "models": ["m"],
             "options": {"format": "openai", **options,
                         "failures": {"drop_after": {"rate": 1.0, "chunks": 5}}}},
            {"name": "b", "type": "simulated", "models": ["m"],
             "options": {"format": "anthropic", **options}},
        ],
        "retry": {"attempts": 1},
    }  # fmt: skip
    messages = [{"role": "user", "content": "Tell me about Alice"}]
    async with Router.from_config(config) as router:
        stream = router.stream("m", messages)
        text = "".join([piece async for piece in stream])
    key = '[["user", "Tell me about Alice"]]'
    assert text == "".join(simulated_words("a", key, 12))
    assert stream.status == "switched"
    assert [a.provider for a in stream.attempts] == ["a", "b"]
