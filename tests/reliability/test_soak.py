"""A soak at a size CI can afford: 3,000 requests, 200 at a time, through three
simulated upstreams that fail before and in the middle of answers, while consumers
read to the end, break out early, or are cancelled.

Invariants, for every request: an answer read to the end is exactly the text the
first serving upstream would have given (so no seam lost or doubled anything), or a
typed error with a partial answer that is a prefix of it; the status says which;
an early exit is ``cancelled``. Afterwards no connection is held and no task is left.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from typing import Any

from polyroute import PolyrouteError, Router, RouterStream
from polyroute.providers.simulated import Simulated
from polyroute.simulator.text import simulated_words

REQUESTS = 3000
AT_ONCE = 200
WORDS = 12
MESSAGES = [{"role": "user", "content": "Tell me about the soak"}]
FAST = {"first_chunk_ms": 1, "chunk_gap_ms": 0.5}
UPSTREAMS: list[dict[str, Any]] = [
    {
        "name": "flaky",
        "format": "openai",
        "seed": 5,
        "failures": {
            "status": {503: 0.1},
            "reset": 0.05,
            "drop_after": {"rate": 0.15, "chunks": 5},
        },
    },
    {
        "name": "dropper",
        "format": "darkai",
        "seed": 6,
        "failures": {"drop_after": {"rate": 0.25, "chunks": 8}},
    },
    {
        "name": "steady",
        "format": "openai",
        "seed": 7,
        "failures": {"drop_after": {"rate": 0.02, "chunks": 3}},
    },
]


def expected(provider: str) -> str:
    conversation = json.dumps([[m["role"], m["content"]] for m in MESSAGES])
    return "".join(simulated_words(provider, conversation, WORDS))


def first_server(stream: RouterStream) -> str:
    return next(a.provider for a in stream.attempts if a.ttft_ms is not None)


async def read_all(stream: RouterStream) -> str:
    try:
        async with stream:
            text = "".join([piece async for piece in stream])
    except PolyrouteError:
        assert stream.status in ("truncated", "failed")
        if stream.status == "truncated":
            assert expected(first_server(stream)).startswith(stream.text)
        return "typed error"
    assert text == expected(first_server(stream)), (stream.attempts, text)
    assert stream.status == ("switched" if stream.switches else "complete")
    return stream.status


async def break_early(stream: RouterStream, after: int) -> str:
    received: list[str] = []
    try:
        async with stream:
            async for piece in stream:
                received.append(piece)
                if len(received) > after:
                    break
    except PolyrouteError:
        return "typed error"
    assert expected(first_server(stream)).startswith("".join(received))
    if len(received) > after:
        assert stream.status == "cancelled"
        assert all(a.outcome != "running" for a in stream.attempts)
        return "broke off"
    assert stream.status in ("complete", "switched")
    return stream.status


async def cancel_midway(stream: RouterStream) -> str:
    first = asyncio.Event()

    async def consume() -> None:
        async with stream:
            async for _piece in stream:
                first.set()

    task = asyncio.create_task(consume())
    waiter = asyncio.create_task(first.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    task.cancel()
    results = await asyncio.gather(task, waiter, return_exceptions=True)
    if isinstance(results[0], PolyrouteError):
        return "typed error"
    if isinstance(results[0], asyncio.CancelledError):
        assert stream.status == "cancelled"
        return "cancelled"
    assert stream.status in ("complete", "switched")
    return stream.status


async def test_soak_keeps_every_answer_whole_or_typed_and_leaks_nothing() -> None:
    entries = [
        {
            "name": up["name"],
            "type": "simulated",
            "models": ["m"],
            "options": {k: up[k] for k in ("format", "seed", "failures")}
            | {"words": WORDS, "latency": FAST},
        }
        for up in UPSTREAMS
    ]
    config = {
        "providers": entries,
        "retry": {"attempts": 2, "backoff_initial": 0.005, "backoff_max": 0.02},
        "timeouts": {"first_chunk": 5, "idle": 5},
        "cooldown": {"failures": 1_000_000},
        "max_relays": 2,
        "order": "adaptive",
    }
    picker = random.Random(2026)
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(router: Router) -> str:
        async with gate:
            stream = router.stream("m", MESSAGES)
            draw = picker.random()
            if draw < 0.7:
                return await read_all(stream)
            if draw < 0.85:
                return await break_early(stream, picker.randrange(0, WORDS))
            return await cancel_midway(stream)

    started = time.perf_counter()
    async with Router.from_config(config) as router:
        outcomes = Counter(await asyncio.gather(*(one(router) for _ in range(REQUESTS))))
        simulated = [p for p in router.providers if isinstance(p, Simulated)]
        held = sum(len(p._inner._sessions.session.connector._acquired) for p in simulated)  # type: ignore[attr-defined, union-attr]
        faults = Counter(
            outcome for p in simulated for outcome, n in p.server.outcomes.items() for _ in range(n)
        )
    print(
        f"\nsoak: {REQUESTS} requests in {time.perf_counter() - started:.1f} s; "
        f"outcomes {dict(outcomes)}; upstream answers {dict(faults)}; connections held {held}"
    )
    assert sum(outcomes.values()) == REQUESTS
    assert outcomes["switched"] > 50  # the drops were relayed, and checked above
    assert outcomes["broke off"] > 0
    assert outcomes["cancelled"] > 0
    assert faults["drop"] > 100
    assert held == 0
    current = asyncio.current_task()
    assert [task for task in asyncio.all_tasks() if task is not current] == []
