"""``Router.reconfigured``: the router of a reloaded config shares its predecessor's
routing state, cache and budget keeper, keeps the provider of every entry whose
connection settings did not change, and changes nothing until ``take_over``."""

from __future__ import annotations

from typing import Any

import pytest

from polyroute import Router
from polyroute.core.errors import ConfigError
from polyroute.router.state import Denied, Lease
from tests.router.helpers import HI
from tests.upstreams.openai import OpenAIUpstream


def entry(name: str, url: str = "http://127.0.0.1:9/v1", **keys: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "base_url": url, "models": ["m"], **keys}


def config(*entries: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"providers": list(entries), **settings}


def one_token() -> int:
    return 1


def test_an_entry_keeps_its_provider_unless_its_connection_changes() -> None:
    first = Router.from_config(config(entry("same"), entry("moved"), entry("gone")))
    providers = {entry.name: entry.provider for entry in first.policy.entries}
    second = first.reconfigured(
        config(
            entry("same", priority=-1, weight=3, price={"input": 1}, limits={"rpm": 5}),
            entry("moved", url="http://127.0.0.1:10/v1"),
            entry("new"),
        )
    )
    kept = {entry.name: entry.provider for entry in second.policy.entries}
    assert kept["same"] is providers["same"]
    assert kept["moved"] is not providers["moved"]
    assert kept["moved"].base_url == "http://127.0.0.1:10/v1"
    assert "gone" not in kept
    assert [entry.name for entry in second.policy.entries] == ["same", "moved", "new"]
    assert (second.state, second.budgets, second.cache) == (first.state, first.budgets, None)


async def test_new_limits_apply_only_once_the_new_router_takes_over() -> None:
    first = Router.from_config(config(entry("a", limits={"rpm": 1})))
    assert isinstance(await first.state.acquire("a", one_token), Lease)
    assert isinstance(await first.state.acquire("a", one_token), Denied)
    second = first.reconfigured(config(entry("a", limits={"rpm": 2})))
    assert isinstance(await first.state.acquire("a", one_token), Denied)  # not yet
    second.take_over()
    assert isinstance(await second.state.acquire("a", one_token), Lease)  # 1 of 2 kept
    assert isinstance(await second.state.acquire("a", one_token), Denied)


def test_state_and_cache_stay_as_they_run() -> None:
    first = Router.from_config(config(entry("a"), cache={"backend": "memory"}))
    second = first.reconfigured(
        config(entry("a"), state={"backend": "redis", "url": "redis://127.0.0.1:9/0"})
    )
    assert second.settings.state == first.settings.state
    assert second.settings.cache == first.settings.cache
    assert second.cache is first.cache
    assert second.describe_state() == "memory (this process only)"


def test_a_config_that_does_not_load_raises_and_changes_nothing() -> None:
    first = Router.from_config(config(entry("a")))
    with pytest.raises(ConfigError, match="duplicate provider names: a"):
        first.reconfigured(config(entry("a"), entry("a", url="http://127.0.0.1:10/v1")))
    with pytest.raises(ConfigError, match=r"aliases\.fast points to 'x'"):
        first.reconfigured(config(entry("a"), aliases={"fast": "x"}))
    assert [entry.name for entry in first.policy.entries] == ["a"]


async def test_both_routers_serve_until_the_old_one_is_left(
    openai_upstream: OpenAIUpstream,
) -> None:
    first = Router.from_config(config(entry("a", url=openai_upstream.base_url)))
    second = first.reconfigured(
        config(entry("a", url=openai_upstream.base_url), aliases={"fast": "m"})
    )
    await second.start()
    second.take_over()
    assert await first.complete_text("m", HI) == "Hello, world!"  # a request begun before
    assert await second.complete_text("fast", HI) == "Hello, world!"
    await second.aclose()  # the one in service closes the shared provider and state
    assert not first.providers[0]._sessions.is_open
