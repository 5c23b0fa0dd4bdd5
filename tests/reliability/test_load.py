"""1,000 concurrent streams across three simulated upstreams, two of them faulty.

Every call must end with the complete expected text or a typed error listing its
attempts; none may end with silently truncated text; the event loop must see no
unhandled error (the loop guard in tests/conftest.py); afterwards no connection is
held and no task is left. The figures printed here are quoted in docs/reliability.md
(run with -s to see them).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

from polyroute import AllProvidersFailed, PolyrouteError, Router
from polyroute.providers.simulated import Simulated
from polyroute.simulator.text import simulated_words

CALLS = 1000
WORDS = 16
MESSAGES = [{"role": "user", "content": "Hi"}]
FAST = {"first_chunk_ms": 5, "chunk_gap_ms": 1}
FAILS_30_PERCENT = {  # all before the first chunk, at different points
    "status": {503: 0.12, 500: 0.06},
    "reset": 0.07,
    "drop_after": {"rate": 0.05, "chunks": 0},
}
# Half the calls ask for "a" (fails, then steady), half for "b" (stalls, then steady),
# so each faulty upstream carries about 500 calls.
PROVIDERS: list[dict[str, Any]] = [
    {
        "name": "fails",
        "models": ["a"],
        "format": "openai",
        "seed": 12,
        "failures": FAILS_30_PERCENT,
    },
    {"name": "stalls", "models": ["b"], "format": "darkai", "seed": 11, "failures": {"stall": 0.1}},
    {"name": "steady", "models": ["a", "b"], "format": "openai", "seed": 13, "failures": {}},
]


def entry(profile: dict[str, Any]) -> dict[str, Any]:
    options = {key: profile[key] for key in ("format", "seed", "failures")}
    return {
        "name": profile["name"],
        "type": "simulated",
        "models": profile["models"],
        "options": {**options, "words": WORDS, "latency": FAST},
    }


def expected_text(name: str) -> str:
    conversation = json.dumps([[m["role"], m["content"]] for m in MESSAGES])
    return "".join(simulated_words(name, conversation, WORDS))


async def one_call(router: Router, model: str) -> tuple[str, Any]:
    stream = router.stream(model, MESSAGES)
    try:
        text = "".join([chunk async for chunk in stream])
    except PolyrouteError as error:
        return "typed error", error
    if text != expected_text(stream.provider or ""):
        return "truncated", (stream.provider, text)
    return "complete", stream.provider


async def test_thousand_concurrent_streams_with_faults_complete_or_fail_typed() -> None:
    config = {
        "providers": [entry(profile) for profile in PROVIDERS],
        "retry": {"attempts": 2, "backoff_initial": 0.02, "backoff_max": 0.1},
        "timeouts": {"first_chunk": 1.0, "idle": 2.0},
        "cooldown": {"failures": 1_000_000},
    }
    started = time.perf_counter()
    router = Router.from_config(config)
    async with router:
        results = await asyncio.gather(*(one_call(router, "ab"[i % 2]) for i in range(CALLS)))
        simulated = [p for p in router.providers if isinstance(p, Simulated)]
        held = sum(len(p._inner._sessions.session.connector._acquired) for p in simulated)  # type: ignore[attr-defined, union-attr]
    elapsed = time.perf_counter() - started
    fails, stalls, _steady = (p.server for p in simulated)
    kinds = Counter(kind for kind, _ in results)
    injected = sum(
        n for p in simulated for outcome, n in p.server.outcomes.items() if outcome != "ok"
    )
    served_by = Counter(detail for kind, detail in results if kind == "complete")
    print(
        f"\nload: {CALLS} calls in {elapsed:.1f} s; faults injected {injected} "
        f"(fails: {dict(fails.outcomes)}, stalls: {dict(stalls.outcomes)}); "
        f"outcomes {dict(kinds)}; served by {dict(served_by)}; connections held after {held}"
    )
    assert kinds["truncated"] == 0
    assert kinds["complete"] + kinds["typed error"] == CALLS
    for kind, detail in results:
        if kind == "typed error" and isinstance(detail, AllProvidersFailed):
            assert detail.attempts
    assert fails.outcomes["ok"] < fails.requests * 0.8  # about 30% of its answers failed
    assert stalls.outcomes["stall"] > 20
    assert held == 0
    current = asyncio.current_task()
    assert [task for task in asyncio.all_tasks() if task is not current] == []
