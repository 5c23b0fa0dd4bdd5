"""Affinity: a conversation (or user, or key) stays on the entry that served it while
that entry is usable and has headroom; a failure or a limit moves it, and the pin
follows. Two OpenAI-format servers behind ``balance: weighted``, which without
affinity spreads the turns of one conversation over both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from polyroute import Router
from polyroute.core.request import ChatRequest, NativeRequest
from polyroute.router.affinity import affinity_plan, conversation
from polyroute.router.config import AffinityConfig
from tests.router.helpers import FakeSleep
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

SYSTEM = {"role": "system", "content": "You are a terse assistant."}


def turn(n: int, opening: str = "Tell me about the sea.") -> list[dict[str, str]]:
    """Turn ``n`` of a conversation: the system prompt, the same first question, then
    ``n`` exchanges more."""
    messages = [SYSTEM, {"role": "user", "content": opening}]
    for k in range(n):
        messages += [
            {"role": "assistant", "content": f"Answer {k}."},
            {"role": "user", "content": f"And then {k}?"},
        ]
    return messages


@pytest.fixture
async def pair() -> AsyncIterator[tuple[OpenAIUpstream, OpenAIUpstream]]:
    a, b = await OpenAIUpstream().start(), await OpenAIUpstream().start()
    yield a, b
    await a.stop()
    await b.stop()


def config(
    first: OpenAIUpstream,
    second: OpenAIUpstream,
    affinity: dict[str, Any] | None = None,
    *,
    entries: dict[str, dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Entries ``a`` and ``b`` (with ``entries``' keys for each), ``balance: weighted``."""
    listed = [
        {"name": "a", "type": "openai", "base_url": first.base_url, "models": ["m"]},
        {"name": "b", "type": "openai", "base_url": second.base_url, "models": ["m"]},
    ]
    for entry in listed:
        entry.update((entries or {}).get(entry["name"], {}))
    settings: dict[str, Any] = {"providers": listed, "balance": "weighted", **extra}
    settings.setdefault("retry", {"attempts": 1})
    if affinity is not None:
        settings["affinity"] = affinity
    return settings


async def served(router: Router, messages: Any, **params: Any) -> str | None:
    async with router.stream("m", messages, **params) as stream:
        async for _ in stream:
            pass
    return stream.provider


def affinity_events(logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(log["action"], log["provider"]) for log in logs if log["event"] == "route.affinity"]


async def test_without_affinity_weighted_balance_spreads_one_conversation(
    pair: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    """The baseline the other tests improve on: both entries serve the conversation."""
    async with Router.from_config(config(*pair)) as router:
        providers = {await served(router, turn(n)) for n in range(40)}
    assert providers == {"a", "b"}  # 40 coin flips all alike: 2 in 10^12


async def test_every_turn_of_a_conversation_goes_to_the_entry_of_its_first(
    pair: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    with capture_logs() as logs:
        async with Router.from_config(config(*pair, affinity={})) as router:
            first = await served(router, turn(0))
            later = [await served(router, turn(n)) for n in range(1, 20)]
            others = {await served(router, turn(1, f"Question {q}")) for q in range(40)}
    assert later == [first] * 19
    assert others == {"a", "b"}  # other conversations are still spread
    events = affinity_events(logs)
    assert events[:20] == [("made", first)] + [("kept", first)] * 19
    keys = {log["key"] for log in logs if log["event"] == "route.affinity"}
    assert len(keys) == 41
    assert all(len(key) == 12 for key in keys)


@pytest.mark.parametrize(
    ("by", "params", "headers"),
    [
        ("user", {"user": "alice"}, None),
        ("prompt_cache_key", {"prompt_cache_key": "tenant-7"}, None),
        ("header:X-Session-Id", {}, {"x-session-id": "s-1"}),
    ],
)
async def test_affinity_by_user_key_or_header_spans_conversations(
    pair: tuple[OpenAIUpstream, OpenAIUpstream],
    by: str,
    params: dict[str, Any],
    headers: dict[str, str] | None,
) -> None:
    async with Router.from_config(config(*pair, affinity={"by": by})) as router:
        providers = [
            await served(router, turn(1, f"Question {q}"), headers=headers, **params)
            for q in range(20)
        ]
        with capture_logs() as logs:
            await served(router, turn(0))  # no such key: no affinity
    assert len(set(providers)) == 1
    assert affinity_events(logs) == []


async def test_a_failed_entry_moves_the_conversation_and_the_pin_follows(
    pair: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    a, b = pair
    servers = {"a": a, "b": b}
    async with Router.from_config(config(a, b, affinity={})) as router:
        first = await served(router, turn(0))
        assert first is not None
        other = "b" if first == "a" else "a"
        servers[first].then(Script(status=503))
        with capture_logs() as logs:
            assert await served(router, turn(1)) == other
            assert await served(router, turn(2)) == other  # the pin moved with it
    assert affinity_events(logs) == [("moved", other), ("kept", other)]
    moved = next(log for log in logs if log["event"] == "route.affinity")
    assert moved["from_provider"] == first


async def test_an_entry_without_headroom_moves_the_conversation(
    pair: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    # a first (priority): the conversation is pinned there, until a's rpm is spent.
    entries = {"a": {"limits": {"rpm": 1}}, "b": {"priority": 1}}
    settings = config(*pair, affinity={}, entries=entries)
    with capture_logs() as logs:
        async with Router.from_config(settings, sleep=FakeSleep()) as router:
            assert await served(router, turn(0)) == "a"
            assert await served(router, turn(1)) == "b"  # a's rpm is spent
            assert await served(router, turn(2)) == "b"  # kept on b, not back to a
    assert affinity_events(logs) == [("made", "a"), ("moved", "b"), ("kept", "b")]
    skip = next(log for log in logs if log["event"] == "route.skip")
    assert (skip["provider"], skip["reason"]) == ("a", "rpm limit 1 reached")


async def test_affinity_per_model_and_by_pattern(
    pair: tuple[OpenAIUpstream, OpenAIUpstream],
) -> None:
    settings = config(*pair, per_model={"m*": {"affinity": {"ttl_s": 60}}})
    with capture_logs() as logs:
        async with Router.from_config(settings) as router:
            assert router.route_settings("m").affinity == AffinityConfig(ttl_s=60)
            providers = {await served(router, turn(n)) for n in range(10)}
    assert len(providers) == 1
    assert affinity_events(logs)[0][0] == "made"


def test_the_conversation_key_is_the_system_prompt_tools_and_first_user_message() -> None:
    tools = [{"type": "function", "function": {"name": "look"}}]
    first = ChatRequest.build(turn(0), {"tools": tools})
    later = ChatRequest.build(turn(5), {"tools": tools, "temperature": 0.2})
    other_tools = ChatRequest.build(turn(5), {})
    on = AffinityConfig()
    plan = affinity_plan(on, "m", first)
    assert plan is not None
    assert affinity_plan(on, "m", later) == plan
    assert affinity_plan(on, "m", other_tools) != plan
    assert affinity_plan(on, "other-model", first) != plan
    assert conversation(first)[0] == [SYSTEM["content"]]
    # Anthropic's metadata.user_id, from a native request, counts as the user.
    native = NativeRequest("anthropic", {"metadata": {"user_id": "u-1"}})
    by_user = AffinityConfig(by="user")
    from_native = affinity_plan(by_user, "m", ChatRequest.build(turn(0), {}, native))
    assert from_native == affinity_plan(by_user, "m", ChatRequest.build(turn(1), {"user": "u-1"}))
    assert affinity_plan(by_user, "m", ChatRequest.build(turn(0), {})) is None


def test_affinity_by_must_name_a_known_key() -> None:
    with pytest.raises(ValueError, match="header:NAME"):
        AffinityConfig(by="session")
    assert AffinityConfig(by="header:X-Conv").by == "header:x-conv"
