"""The synchronous facade: the same routing from plain (non-async) code."""

from __future__ import annotations

from typing import Any

import pytest

from polyroute import AllProvidersFailed, SyncRouter, TextDelta

HI = [{"role": "user", "content": "Hi"}]
FAST = {"first_chunk_ms": 0, "chunk_gap_ms": 0}


def sim(name: str, **options: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "simulated",
        "models": ["m"],
        "options": {"words": 6, "latency": FAST, **options},
    }


def test_a_for_loop_streams_text_with_retries_and_fallback() -> None:
    failing = sim("down", format="openai", failures={"status": {503: 1.0}})
    config = {"providers": [failing, sim("up", format="darkai")], "retry": {"attempts": 2}}
    with SyncRouter.from_config(config) as router:
        stream = router.stream("m", HI)
        pieces = list(stream)
        message = router.complete("m", HI)
        text = router.complete_text("m", HI)
    assert "".join(pieces).startswith("[simulated up]")
    assert (stream.provider, stream.status) == ("up", "complete")
    assert [a.outcome for a in stream.attempts] == ["failed", "failed", "ok"]
    assert message.content == text == "".join(pieces)


def test_deltas_and_a_break_inside_with_closes_at_once() -> None:
    with SyncRouter.from_config({"providers": [sim("up", format="openai")]}) as router:
        deltas = list(router.stream("m", HI).deltas())
        with router.stream("m", HI) as stream:
            for _text in stream:
                break
        assert stream.status == "cancelled"
    assert any(isinstance(delta, TextDelta) for delta in deltas)


def test_errors_are_the_typed_ones() -> None:
    config = {"providers": [sim("down", failures={"status": {500: 1.0}})], "retry": {"attempts": 1}}
    with SyncRouter.from_config(config) as router, pytest.raises(AllProvidersFailed):
        router.complete_text("m", HI)


def test_close_is_safe_twice() -> None:
    router = SyncRouter([{"name": "up", **sim("up")}])
    router.close()
    router.close()
