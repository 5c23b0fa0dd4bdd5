from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from polyroute import (
    AllProvidersFailed,
    ConfigError,
    ModelNotSupportedError,
    Router,
    RouterConfig,
    load_config,
)
from polyroute.providers import DarkAI

YAML = """
providers:
  - name: dark
    type: darkai
    api_endpoint: http://127.0.0.1:8081/chat
    working: true
  - name: backup
    type: darkai
    api_endpoint: http://127.0.0.1:8082/chat
    priority: 5
aliases: {smart: gpt-4o}
fallbacks:
  gpt-4o: [llama-3-70b]
retry:
  attempts: 2
  backoff_initial: 0.2
  backoff_max: 5
timeouts: {connect: 10, first_chunk: 30, idle: 60, total: 600}
cooldown: {failures: 3, seconds: 30}
"""

TOML = """
aliases = {smart = "gpt-4o"}
[fallbacks]
gpt-4o = ["llama-3-70b"]
[[providers]]
name = "dark"
type = "darkai"
api_endpoint = "http://127.0.0.1:8081/chat"
working = true
[[providers]]
name = "backup"
type = "darkai"
api_endpoint = "http://127.0.0.1:8082/chat"
priority = 5
[retry]
attempts = 2
backoff_initial = 0.2
backoff_max = 5
[timeouts]
connect = 10
first_chunk = 30
idle = 60
total = 600
[cooldown]
failures = 3
seconds = 30
"""


def test_yaml_toml_json_and_dict_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(YAML)
    (tmp_path / "r.toml").write_text(TOML)
    from_yaml = load_config(tmp_path / "r.yaml")
    (tmp_path / "r.json").write_text(json.dumps(from_yaml.model_dump()))
    assert load_config(tmp_path / "r.toml") == from_yaml
    assert load_config(str(tmp_path / "r.json")) == from_yaml
    assert load_config(from_yaml.model_dump()) == from_yaml
    assert load_config(from_yaml) is from_yaml


def test_defaults_when_keys_are_omitted() -> None:
    config = load_config({"providers": [{"name": "a", "type": "darkai"}]})
    assert config.retry.attempts == 2
    assert (config.timeouts.connect, config.timeouts.first_chunk) == (10, 30)
    assert (config.timeouts.idle, config.timeouts.total) == (60, 600)
    assert (config.cooldown.failures, config.cooldown.seconds) == (3, 30)
    assert config.providers[0].priority == 0


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"providers": [{"name": "a", "type": "darkai", "priorty": 1}]}, "providers.0.priorty"),
        (
            {"providers": [{"name": "a", "type": "darkai"}], "retry": {"attempts": 0}},
            "retry.attempts",
        ),
        ({"providers": [{"type": "darkai"}]}, "providers.0.name"),
        ({"providers": []}, "providers"),
        (
            {"providers": [{"name": "a", "type": "darkai"}], "timeouts": {"idle": -1}},
            "timeouts.idle",
        ),
    ],
)
def test_errors_name_the_key_path(data: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_config(data)


def test_alias_cycle_is_rejected() -> None:
    data = {"providers": [{"name": "a", "type": "darkai"}], "aliases": {"x": "y", "y": "x"}}
    with pytest.raises(ConfigError, match="alias cycle: x -> y -> x"):
        load_config(data)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [unclosed")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown config format"):
        load_config(tmp_path / "x.ini")


def test_duplicate_entry_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match="duplicate provider names: a"):
        Router.from_config({"providers": [{"name": "a", "type": "darkai"}] * 2})


def test_unknown_provider_type_lists_known_types() -> None:
    with pytest.raises(ConfigError, match=r"providers\.0\.type: unknown provider 'nope'.*darkai"):
        Router.from_config({"providers": [{"name": "a", "type": "nope"}]})


def test_option_the_type_does_not_take_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'a', type 'darkai'.*base_url"):
        Router.from_config({"providers": [{"name": "a", "type": "darkai", "base_url": "http://x"}]})


def test_entry_overrides_reach_the_provider_instance() -> None:
    router = Router.from_config(yaml.safe_load(YAML.replace("127.0.0.1:8082", "b")))
    dark, backup = router.providers
    assert isinstance(dark, DarkAI)
    assert (dark.entry_name, dark.working, dark.api_endpoint) == (
        "dark",
        True,
        "http://127.0.0.1:8081/chat",
    )
    assert (backup.entry_name, backup.working, backup.api_endpoint) == (
        "backup",
        False,
        "http://b/chat",
    )
    assert dark.timeouts.first_chunk == 30


def test_entry_timeouts_override_only_the_keys_given() -> None:
    router = Router.from_config(
        {
            "providers": [{"name": "a", "type": "darkai", "timeouts": {"idle": 5}}],
            "timeouts": {"total": 99},
        }
    )
    timeouts = router.providers[0].timeouts
    assert (timeouts.connect, timeouts.first_chunk, timeouts.idle, timeouts.total) == (
        10,
        30,
        5,
        99,
    )


def test_api_key_comes_from_the_environment_and_never_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DARK_KEY", "dk-live-0123456789abcdef")
    config = {
        "providers": [
            {
                "name": "a",
                "type": "darkai",
                "api_key_env": "DARK_KEY",
                "proxy": "http://u:proxysecret@127.0.0.1:3128",
            }
        ]
    }
    router = Router.from_config(config)
    provider = router.providers[0]
    assert provider.headers["Authorization"] == "Bearer dk-live-0123456789abcdef"
    shown = repr(router) + repr(provider) + repr(load_config(config)) + str(load_config(config))
    assert "0123456789abcdef" not in shown
    assert "proxysecret" not in shown


async def test_a_missing_key_skips_its_entry_and_the_error_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    entry = {"name": "a", "type": "darkai", "api_key_env": "NO_SUCH_KEY", "working": True}
    with capture_logs() as logs:
        async with Router.from_config({"providers": [entry]}) as router:
            with pytest.raises(
                AllProvidersFailed, match="a \\(gpt-4o\\): no key: NO_SUCH_KEY is not set"
            ):
                await router.complete_text("gpt-4o", [{"role": "user", "content": "Hi"}])
    (failed,) = [log for log in logs if log["event"] == "route.failed"]
    assert failed["reasons"] == ["a (gpt-4o): no key: NO_SUCH_KEY is not set"]


def test_router_from_code_with_instances_and_settings() -> None:
    router = Router(
        [DarkAI(name="one"), {"name": "two", "type": "darkai"}],
        aliases={"s": "gpt-4o"},
        retry={"attempts": 1},
    )
    assert [p.entry_name for p in router.providers] == ["one", "two"]
    assert router.settings.retry.attempts == 1
    with pytest.raises(ConfigError, match=r"retry\.attempts"):
        Router([DarkAI()], retry={"attempts": -1})


def test_router_config_is_exported() -> None:
    assert RouterConfig.model_fields["providers"].is_required()


async def test_default_model_serves_requests_without_a_model() -> None:
    router = Router([DarkAI(name="d", working=True)], default_model="gpt-4o")
    assert router.stream(None, [{"role": "user", "content": "x"}]).requested_model == "gpt-4o"
    without = Router([DarkAI(name="d")])
    with pytest.raises(
        ModelNotSupportedError, match="no model given, and this router has no default_model"
    ):
        without.stream("", [{"role": "user", "content": "x"}])


def test_a_router_alias_to_a_model_nobody_serves_is_a_config_error() -> None:
    entry = {"name": "a", "type": "darkai", "working": True, "models": ["gpt-4o"]}
    with pytest.raises(ConfigError, match=r"aliases.smart points to 'gpt-5', which no provider"):
        Router.from_config({"providers": [entry], "aliases": {"smart": "gpt-5"}})
    chained = {"aliases": {"smart": "gpt-5"}, "fallbacks": {"gpt-5": ["gpt-4o"]}}
    assert Router.from_config({"providers": [entry], **chained}).policy.chain_of("smart") == [
        "gpt-5",
        "gpt-4o",
    ]
    open_entry = {"name": "b", "type": "openai", "base_url": "http://127.0.0.1:9/v1"}
    Router.from_config({"providers": [open_entry], "aliases": {"smart": "gpt-5"}})


def test_an_entry_alias_leading_outside_its_models_is_a_config_error() -> None:
    entry = {
        "name": "a",
        "type": "openai",
        "models": ["gpt-4o"],
        "model_aliases": {"mini": "gpt-4o-mini"},
    }
    with pytest.raises(ConfigError, match=r"providers.0.model_aliases.mini \('a'\) points to"):
        Router.from_config({"providers": [entry]})
