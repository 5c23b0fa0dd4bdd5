"""One benchmark client in its own process; prints one JSON line of figures.

Run: python -m benchmarks.client --client router --base http://127.0.0.1:PORT
     --concurrency 100 --seconds 3 --cpu 0
Clients: floor (hand-written aiohttp + SSE line splitting + json.loads), provider
(polyroute's OpenAI provider called directly), router (router.stream with two entries,
an alias and a fallback chain), router-tools (the same router, a tool call streamed in
as many fragments as the text answer has chunks, read with stream.deltas()),
openai-sdk (AsyncOpenAI), litellm (litellm.Router).
Scenarios besides streaming: --failover (first entry answers 503 at once) and
--idle N (N streams held open after their first chunk; reports RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

MESSAGES = [{"role": "user", "content": "Say something."}]
OneStream = Callable[[], Awaitable[tuple[float, int]]]


def floor_client(base: str) -> tuple[OneStream, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    url = f"{base}/v1/chat/completions"
    body = {"model": "bench", "messages": MESSAGES, "stream": True}

    async def one() -> tuple[float, int]:
        started = time.perf_counter()
        ttft, chunks = 0.0, 0
        pending = b""
        async with session.post(url, json=body) as response:
            async for data in response.content.iter_any():
                # Split on line ends over the buffer: the cheapest correct SSE framing.
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    content = json.loads(line[6:])["choices"][0]["delta"].get("content")
                    if content:
                        if not chunks:
                            ttft = time.perf_counter() - started
                        chunks += 1
        return ttft, chunks

    return one, session.close


def polyroute_provider(base: str) -> tuple[OneStream, Callable[[], Awaitable[None]]]:
    from polyroute.providers import OpenAI

    provider = OpenAI(name="bench", base_url=f"{base}/v1", models=[], include_usage=False)

    async def one() -> tuple[float, int]:
        return await _consume(provider.create_async_generator("bench", MESSAGES))

    return one, provider.aclose


def router_config(base: str, first: str) -> dict[str, Any]:
    return {
        "providers": [
            {
                "name": "primary",
                "type": "openai",
                "base_url": f"{first}/v1",
                "models": ["bench"],
                "options": {"include_usage": False},
            },
            {
                "name": "backup",
                "type": "openai",
                "base_url": f"{base}/v1",
                "models": ["bench", "bench-small"],
                "options": {"include_usage": False},
            },
        ],
        "aliases": {"fast": "bench"},
        "fallbacks": {"bench": ["bench-small"]},
        "retry": {"attempts": 1},
        "cooldown": {"failures": 10**9},
    }


ROUTERS: list[Any] = []
"""Routers made by this client process (their state's figures go in the results)."""
STATES: dict[str, dict[str, Any]] = {
    "memory": {},
    "redis": {},
    # Every request takes a place under rpm and concurrent and counts for the budget.
    "redis-limits": {
        "limits": {"rpm": 10**9, "concurrent": 10**6},
        "budget": {"ratio": 0.2},
    },
}


def with_state(config: dict[str, Any], state: str, redis_url: str) -> dict[str, Any]:
    """``config`` (with a ``retry`` section) set to STATES variant ``state`` on
    ``redis_url``; the router client and benchmarks/shared_state.py share it."""
    variant = STATES[state]
    if state != "memory":
        config["state"] = {"backend": "redis", "url": redis_url}
    for entry in config["providers"]:
        if "limits" in variant:
            entry["limits"] = variant["limits"]
    if "budget" in variant:
        config["retry"]["budget"] = variant["budget"]
    return config


def polyroute_router(
    base: str, first: str | None = None, state: str = "memory"
) -> tuple[OneStream, Callable[[], Awaitable[None]]]:
    """The router; ``state`` (benchmarks/shared_state.py) picks a STATES variant, on the
    Redis at $POLYROUTE_BENCH_REDIS for the redis ones."""
    from polyroute import Router

    config = router_config(base, first or base)
    if state != "memory":
        with_state(config, state, os.environ["POLYROUTE_BENCH_REDIS"])
    router = Router.from_config(config)
    ROUTERS.append(router)

    async def one() -> tuple[float, int]:
        return await _consume(router.stream("fast", MESSAGES))

    return one, router.aclose


TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]


def polyroute_router_tools(base: str) -> tuple[OneStream, Callable[[], Awaitable[None]]]:
    from polyroute import Router, ToolCallDelta

    router = Router.from_config(router_config(f"{base}/tools", f"{base}/tools"))

    async def one() -> tuple[float, int]:
        started = time.perf_counter()
        ttft, chunks = 0.0, 0
        async with router.stream("fast", MESSAGES, tools=TOOLS) as stream:
            async for delta in stream.deltas():
                if isinstance(delta, ToolCallDelta):
                    if not chunks:
                        ttft = time.perf_counter() - started
                    chunks += 1
        return ttft, chunks

    return one, router.aclose


def openai_sdk(base: str) -> tuple[OneStream, Callable[[], Awaitable[None]]]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="bench", max_retries=0)

    async def one() -> tuple[float, int]:
        started = time.perf_counter()
        stream = await client.chat.completions.create(model="bench", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        return await _count_chunks(stream, started)

    return one, client.close


def litellm_router(base: str) -> tuple[OneStream, Callable[[], Awaitable[None]]]:
    import litellm

    litellm.telemetry = False
    router = litellm.Router(
        model_list=[
            {
                "model_name": "bench",
                "litellm_params": {
                    "model": "openai/bench",
                    "api_base": f"{base}/v1",
                    "api_key": "bench",
                },
            }
        ]
    )

    async def one() -> tuple[float, int]:
        started = time.perf_counter()
        response = await router.acompletion(model="bench", messages=MESSAGES, stream=True)
        return await _count_chunks(response, started)

    async def close() -> None:
        return None

    return one, close


async def _count_chunks(stream: Any, started: float) -> tuple[float, int]:
    """Time to first content and content chunks of a stream of chat-completion objects."""
    ttft, chunks = 0.0, 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if not chunks:
                ttft = time.perf_counter() - started
            chunks += 1
    return ttft, chunks


async def _consume(texts: Any) -> tuple[float, int]:
    started = time.perf_counter()
    ttft, chunks = 0.0, 0
    async for text in texts:
        if text:
            if not chunks:
                ttft = time.perf_counter() - started
            chunks += 1
    return ttft, chunks


CLIENTS: dict[str, Callable[..., tuple[OneStream, Callable[[], Awaitable[None]]]]] = {
    "floor": floor_client,
    "provider": polyroute_provider,
    "router": polyroute_router,
    "router-tools": polyroute_router_tools,
    "router-redis": lambda base: polyroute_router(base, state="redis"),
    "router-redis-limits": lambda base: polyroute_router(base, state="redis-limits"),
    "openai-sdk": openai_sdk,
    "litellm": litellm_router,
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def stream_for(one: OneStream, concurrency: int, seconds: float) -> dict[str, Any]:
    # Warm up: one wave opens the connection pool and fills the caches.
    await asyncio.gather(*(one() for _ in range(min(concurrency, 200))))
    ttfts: list[float] = []
    chunks = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal chunks
        while time.perf_counter() < deadline:
            ttft, count = await one()
            ttfts.append(ttft)
            chunks += count

    cpu, started = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    ttfts.sort()
    streams = len(ttfts)
    return {
        "streams": streams,
        "wall_s": wall,
        "streams_per_s": streams / wall,
        "chunks_per_s": chunks / wall,
        "chunks_per_stream": chunks / max(1, streams),
        "cpu_s_per_1000": cpu / max(1, streams) * 1000,
        "ttft_p50_ms": ttfts[streams // 2] * 1000 if streams else None,
        "ttft_p99_ms": ttfts[min(streams - 1, int(streams * 0.99))] * 1000 if streams else None,
    }


async def hold_idle(base: str, count: int) -> dict[str, Any]:
    from polyroute import Router

    config = router_config(base, base)
    for entry in config["providers"]:
        entry["base_url"] = f"{base}/idle/v1"
    router = Router.from_config(config)
    streams = [router.stream("fast", MESSAGES) for _ in range(count)]
    started = time.perf_counter()
    firsts = await asyncio.gather(*(anext(stream) for stream in streams))
    opened = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    await asyncio.gather(*(stream.aclose() for stream in streams))
    await router.aclose()
    return {"idle_streams": len(firsts), "open_s": opened, "peak_rss_mb": rss_mb}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.idle:
        return await hold_idle(args.base, args.idle)
    imported = time.perf_counter()
    if args.failover:
        one, close = polyroute_router(args.base, first=f"{args.base}/fail")
    else:
        one, close = CLIENTS[args.client](args.base)
    import_s = time.perf_counter() - imported
    try:
        result = await stream_for(one, args.concurrency, args.seconds)
    finally:
        await close()
    result["import_s"] = import_s
    if ROUTERS and ROUTERS[0].state.decisions:
        result["state_decisions"] = dict(ROUTERS[0].state.decisions)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", choices=sorted(CLIENTS), default="router")
    parser.add_argument("--base", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--failover", action="store_true")
    parser.add_argument("--idle", type=int, default=0)
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
