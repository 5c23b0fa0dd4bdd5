"""Affinity across gateways: two `polyroute serve` processes on one real redis-server,
in front of two simulated upstreams with prompt caches. A conversation stays on one
entry whichever gateway each turn goes to; a failed entry moves it (for both); an idle
pin expires; `/metrics` shows the cached input tokens per entry."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from polyroute.simulator.profile import SimulatedUpstream
from polyroute.simulator.server import SimulatorServer
from tests.redis_server import RedisServer
from tests.server.helpers import Process, gateway
from tests.state.helpers import until

SYSTEM = "You are the ship's navigator. " * 20  # 600 characters: 150 tokens, cacheable
CACHE = {"min_tokens": 64, "step_tokens": 16, "ms_per_1k_uncached": 0}


@pytest.fixture
async def upstreams() -> AsyncIterator[dict[str, SimulatorServer]]:
    servers = {
        name: await SimulatorServer(
            SimulatedUpstream(
                name=name,
                words=6,
                latency={"first_chunk_ms": 0, "chunk_gap_ms": 0},  # type: ignore[arg-type]
                prompt_cache=CACHE,  # type: ignore[arg-type]
            )
        ).start()
        for name in ("a", "b")
    }
    yield servers
    for server in servers.values():
        await server.stop()


def write_config(
    folder: Path, upstreams: dict[str, SimulatorServer], redis_url: str, ttl_s: float
) -> Path:
    entries = [
        {"name": name, "type": "openai", "base_url": server.config_url, "models": ["m"]}
        for name, server in upstreams.items()
    ]
    config = {
        "providers": entries,
        "balance": "weighted",
        "affinity": {"by": "conversation", "ttl_s": ttl_s},
        # Patient: on a busy machine a pin read past 50 ms would be decided alone.
        "state": {"backend": "redis", "url": redis_url, "timeout_ms": 1000},
        "retry": {"attempts": 1},
    }
    path = folder / "affinity.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def conversation(opening: str, turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": opening}]
    for k in range(turns):
        messages += [
            {"role": "assistant", "content": f"Bearing {k}."},
            {"role": "user", "content": f"And after {k}?"},
        ]
    return messages


async def ask(session: aiohttp.ClientSession, served: Process, messages: Any) -> str:
    """One turn through ``served``; the entry that answered it."""
    body = {"model": "m", "messages": messages}
    async with session.post(f"{served.url}/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        return response.headers["x-polyroute-provider"]


async def affinity_event(served: Process, after: int) -> tuple[dict[str, Any], int]:
    """The next ``route.affinity`` event ``served`` logs from line ``after`` on."""
    seen = await served.said('"route.affinity"', after=after)
    return json.loads(served.stderr[seen - 1]), seen


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def two_gateways(stack: AsyncExitStack, config: Path) -> list[Process]:
    return [
        await stack.enter_async_context(gateway(config, "-v", "--log-format", "json"))
        for _ in range(2)
    ]


async def test_a_conversation_stays_on_one_entry_across_two_gateways_until_it_fails(
    tmp_path: Path,
    upstreams: dict[str, SimulatorServer],
    redis_url: str,
    session: aiohttp.ClientSession,
) -> None:
    config = write_config(tmp_path, upstreams, redis_url, ttl_s=60)
    async with AsyncExitStack() as stack:
        gateways = await two_gateways(stack, config)
        for opening in ("Where are we?", "How deep is it?", "Which way is north?"):
            served = [
                await ask(session, gateways[turn % 2], conversation(opening, turn))
                for turn in range(8)
            ]
            assert len(set(served)) == 1, served  # every turn, through either gateway

        # A conversation so far through the second gateway only: its entry goes down, its
        # next turn there moves it, and the first gateway (which holds no copy of the
        # pin, so reads it in Redis) follows the move. (A gateway holding a copy hears
        # the move on the channel: tests/state/test_pins.py.)
        opening = "Where is the harbour?"
        turns = [await ask(session, gateways[1], conversation(opening, n)) for n in range(4)]
        lost = turns[0]
        assert turns == [lost] * 4
        other = "b" if lost == "a" else "a"
        await upstreams[lost].stop()
        lines = [len(g.stderr) for g in gateways]
        assert await ask(session, gateways[1], conversation(opening, 4)) == other
        moved, _ = await affinity_event(gateways[1], lines[1])
        assert (moved["action"], moved["provider"], moved["from_provider"]) == (
            "moved",
            other,
            lost,
        )
        assert await ask(session, gateways[0], conversation(opening, 5)) == other
        kept, _ = await affinity_event(gateways[0], lines[0])
        assert (kept["action"], kept["provider"], kept["key"]) == ("kept", other, moved["key"])

        # The prompt caches read: each entry reports its cached input, per provider.
        async with session.get(f"{gateways[0].url}/metrics") as response:
            metrics = await response.text()
    cached = dict(
        re.findall(
            r'^polyroute_cached_input_tokens_total\{provider="(\w+)"\} (\S+)$', metrics, re.M
        )
    )
    assert cached
    assert all(float(count) > 0 for count in cached.values())
    for name, server in upstreams.items():
        if server.cache_reads:
            later = server.cache_reads[1:]
            assert all(read.cached_tokens > 0 for read in later), name


async def test_an_idle_pin_expires_and_the_next_turn_is_pinned_anew(
    tmp_path: Path,
    upstreams: dict[str, SimulatorServer],
    redis_url: str,
    redis_server: RedisServer,
    session: aiohttp.ClientSession,
) -> None:
    config = write_config(tmp_path, upstreams, redis_url, ttl_s=1.0)
    async with AsyncExitStack() as stack:
        first, second = await two_gateways(stack, config)
        await ask(session, first, conversation("Anchors?", 0))
        made, _ = await affinity_event(first, 0)
        assert made["action"] == "made"
        pin = "{polyroute}:pin:affinity:*"
        await until(lambda: redis_server.cli("--scan", "--pattern", pin) != "")
        await until(lambda: redis_server.cli("--scan", "--pattern", pin) == "", within=10)
        await ask(session, second, conversation("Anchors?", 1))
        again, _ = await affinity_event(second, 0)
    assert (again["action"], again["key"]) == ("made", made["key"])
