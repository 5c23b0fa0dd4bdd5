"""Router aliases whose keys are ``fnmatch`` patterns (``claude-*``), per docs/router.md."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from polyroute import ConfigError, ModelNotSupportedError, Router
from polyroute.router import policy as policy_module
from tests.router.helpers import HI, collect, entry, router_for
from tests.upstreams.darkai import DarkAIUpstream

Start = Callable[[], Awaitable[DarkAIUpstream]]
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "router.md"
SERVED = ["gpt-4o", "gpt-4o-mini", "llama-3-70b", "claude-sonnet-4-5"]


def simulated(aliases: dict[str, str], models: list[str] | None = None, **extra: Any) -> Router:
    """A router over one simulated entry (nothing starts until a request is made)."""
    sim = {"name": "sim", "type": "simulated", "models": SERVED if models is None else models}
    return Router.from_config({"providers": [{**sim, **extra}], "aliases": aliases})


def test_an_exact_alias_wins_over_a_matching_pattern() -> None:
    router = simulated({"claude-*": "gpt-4o", "claude-haiku-4-5": "llama-3-70b"})
    assert router.policy.resolve_alias("claude-haiku-4-5") == "llama-3-70b"
    assert router.policy.resolve_alias("claude-opus-4-1") == "gpt-4o"


def test_the_longest_matching_pattern_wins_whatever_the_order() -> None:
    aliases = {"*": "gpt-4o-mini", "claude-*": "gpt-4o", "claude-*haiku*": "llama-3-70b"}
    for ordered in (aliases, dict(reversed(aliases.items()))):
        router = simulated(ordered)
        assert router.policy.resolve_alias("claude-3-5-haiku-20241022") == "llama-3-70b"
        assert router.policy.resolve_alias("claude-opus-4-1") == "gpt-4o"
        assert router.policy.resolve_alias("mistral-large") == "gpt-4o-mini"


def test_the_first_listed_of_equally_long_patterns_wins() -> None:
    # "claude*" and "*haiku*" are both 7 characters long and both match.
    first = simulated({"claude*": "gpt-4o", "*haiku*": "llama-3-70b"})
    second = simulated({"*haiku*": "llama-3-70b", "claude*": "gpt-4o"})
    assert first.policy.resolve_alias("claude-haiku-4-5") == "gpt-4o"
    assert second.policy.resolve_alias("claude-haiku-4-5") == "llama-3-70b"


def test_single_character_and_set_patterns_match_case_sensitively() -> None:
    router = simulated({"gpt-?": "gpt-4o", "o[13]-*": "gpt-4o-mini"})
    assert router.policy.resolve_alias("gpt-5") == "gpt-4o"
    assert router.policy.resolve_alias("gpt-55") == "gpt-55"
    assert router.policy.resolve_alias("o3-pro") == "gpt-4o-mini"
    assert router.policy.resolve_alias("o2-pro") == "o2-pro"
    assert router.policy.resolve_alias("GPT-5") == "GPT-5"


def test_patterns_are_left_out_of_known_models() -> None:
    router = simulated({"claude-*": "gpt-4o", "smart": "gpt-4o", "*haiku*": "llama-3-70b"})
    assert router.policy.known_models() == [*sorted(SERVED), "smart"]
    assert set(router.policy.aliases) == {"claude-*", "smart", "*haiku*"}  # still configured


def test_a_model_an_entry_lists_is_not_captured_by_a_pattern() -> None:
    router = simulated(
        {"claude-*": "gpt-4o", "best": "claude-opus"},
        model_aliases={"claude-opus": "claude-sonnet-4-5"},
    )
    assert router.policy.resolve_alias("claude-sonnet-4-5") == "claude-sonnet-4-5"  # models
    assert router.policy.resolve_alias("claude-opus") == "claude-opus"  # an entry's alias
    assert router.policy.resolve_alias("best") == "claude-opus"  # exact aliases still apply
    assert router.policy.resolve_alias("claude-opus-4-1") == "gpt-4o"


def test_an_entry_without_a_models_list_protects_no_name() -> None:
    # It serves any name, so "served" cannot mean "not captured" for it.
    router = simulated({"claude-*": "gpt-4o"}, models=[])
    assert router.policy.resolve_alias("claude-sonnet-4-5") == "gpt-4o"


def test_the_end_of_an_exact_alias_chain_is_matched_against_patterns() -> None:
    router = simulated({"smart": "claude-opus-4-1", "claude-*": "gpt-4o"})
    assert router.policy.chain_of("smart") == ["gpt-4o"]


def test_a_pattern_target_is_followed_through_exact_aliases_only() -> None:
    # claude-next matches claude-* again: the pattern is not applied a second time.
    router = simulated({"claude-*": "main", "main": "claude-next"}, models=[])
    assert router.policy.resolve_alias("claude-x") == "claude-next"
    assert router.policy.resolve_alias("claude-next") == "claude-next"
    assert simulated({"claude-*": "claude-opus"}, models=[]).policy.chain_of("claude-x") == [
        "claude-opus"
    ]


async def test_pattern_aliases_route_requests_end_to_end(start_darkai: Start) -> None:
    big, small = await start_darkai(), await start_darkai()
    aliases = {"claude-*": "gpt-4o", "claude-*haiku*": "llama-3-70b"}
    entries = [entry("big", big, models=["gpt-4o"]), entry("small", small, models=["llama-3-70b"])]
    async with router_for(*entries, aliases=aliases) as router:
        text, main = await collect(router, "claude-sonnet-4-5")
        _, fast = await collect(router, "claude-haiku-4-5")
    assert text == "Hello, world!"
    assert (main.provider, main.model, main.requested_model) == (
        "big",
        "gpt-4o",
        "claude-sonnet-4-5",
    )
    assert (fast.provider, fast.model) == ("small", "llama-3-70b")
    assert [r.body["model"] for r in big.requests + small.requests] == ["gpt-4o", "llama-3-70b"]


def test_an_exact_alias_cycle_reached_from_a_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="alias cycle: main -> fast -> main"):
        simulated({"claude-*": "main", "main": "fast", "fast": "main"})


def test_a_pattern_as_a_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"aliases\.claude-\*: target 'gpt-\*' is a pattern"):
        simulated({"claude-*": "gpt-*"})


def test_a_pattern_whose_target_no_entry_serves_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"aliases\.claude-\* points to 'gpt-5', which no"):
        simulated({"claude-*": "gpt-5"})
    with pytest.raises(ConfigError, match=r"aliases\.claude-\* points to 'gpt-5'"):
        simulated({"claude-*": "next", "next": "gpt-5"})  # through an exact alias
    simulated({"claude-*": "gpt-5"}, models=[])  # an open entry may serve gpt-5


def test_a_name_no_pattern_matches_still_raises_model_not_supported() -> None:
    router = simulated({"claude-*": "gpt-4o"})
    with pytest.raises(ModelNotSupportedError) as caught:
        router.stream("mistral-large", HI)
    assert caught.value.supported == sorted(SERVED)
    assert router.policy.model_chain("claude-opus-4-1") == ["gpt-4o"]


def test_pattern_results_are_cached_per_name_until_models_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def counting(name: str, pattern: str) -> bool:
        calls.append(name)
        return fnmatchcase(name, pattern)

    monkeypatch.setattr(policy_module, "fnmatchcase", counting)
    router = simulated({"claude-*": "gpt-4o"})
    policy = router.policy
    assert [policy.resolve_alias("claude-x") for _ in range(3)] == ["gpt-4o"] * 3
    assert calls == ["claude-x"]
    router.providers[0].models = [*SERVED, "claude-x"]  # as discovery would
    policy.models_changed()
    assert policy.resolve_alias("claude-x") == "claude-x"


def test_the_pattern_cache_is_bounded() -> None:
    policy = simulated({"claude-*": "gpt-4o"}).policy
    for number in range(policy_module._CHAIN_CACHE_SIZE * 2 + 5):
        assert policy.resolve_alias(f"claude-{number}") == "gpt-4o"
    assert len(policy._resolved) <= policy_module._CHAIN_CACHE_SIZE


_NAMES = st.text(alphabet="ab-*?", min_size=0, max_size=6)


@given(
    patterns=st.lists(_NAMES.filter(lambda key: any(c in key for c in "*?")), max_size=5),
    name=st.text(alphabet="ab-", max_size=6),
)
def test_resolution_picks_the_longest_then_first_listed_pattern(
    patterns: list[str], name: str
) -> None:
    aliases = {pattern: f"target-{index}" for index, pattern in enumerate(dict.fromkeys(patterns))}
    policy = simulated(aliases, models=[]).policy
    matching = [(len(p), -i, t) for i, (p, t) in enumerate(aliases.items()) if fnmatchcase(name, p)]
    assert policy.resolve_alias(name) == (max(matching)[2] if matching else name)


def test_the_router_guide_claude_code_example_maps_claude_names() -> None:
    (block,) = [
        b for b in re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S) if "claude-*" in b
    ]
    policy = Router.from_config(yaml.safe_load(block)).policy
    assert policy.resolve_alias("claude-sonnet-4-5") == "gpt-4o"
    assert policy.resolve_alias("claude-opus-4-1") == "gpt-4o"
    assert policy.resolve_alias("claude-haiku-4-5") == "llama-3-70b"
    assert policy.resolve_alias("claude-3-5-haiku-20241022") == "llama-3-70b"
    assert policy.resolve_alias("anthropic/claude-3-5-haiku") == "llama-3-70b"
