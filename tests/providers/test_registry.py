from __future__ import annotations

import pytest

from polyroute import ConfigError, ModelNotSupportedError, ProviderNotFoundError
from polyroute.providers import AsyncGeneratorProvider, DarkAI, Registry, default_registry


class Echo(AsyncGeneratorProvider):
    type_name = "echo"
    default_model = "echo-1"
    models = ["echo-1", "gpt-4o"]
    model_aliases = {"e": "echo-1"}


class Anything(AsyncGeneratorProvider):
    type_name = "anything"


def test_default_registry_holds_darkai() -> None:
    assert default_registry().get("darkai") is DarkAI
    assert "darkai" in default_registry().names()


def test_unknown_provider_error_lists_known_names() -> None:
    registry = Registry({"darkai": DarkAI, "echo": Echo})
    with pytest.raises(ProviderNotFoundError, match=r"known providers: darkai, echo") as caught:
        registry.get("nope")
    assert caught.value.known == ["darkai", "echo"]


def test_register_decorator_and_lookup_by_model() -> None:
    registry = Registry({"darkai": DarkAI})
    registry.register("echo")(Echo)
    assert registry.providers_for("gpt-4o") == [DarkAI, Echo]
    assert registry.providers_for("e") == [Echo]
    assert registry.providers_for("llama-3.1-70b") == [DarkAI]
    assert registry.providers_for("unknown") == []


def test_lazy_reference_is_imported_on_first_use() -> None:
    registry = Registry({"dark": "polyroute.providers.darkai:DarkAI"})
    assert registry.get("dark") is DarkAI


@pytest.mark.parametrize(
    "reference", ["no.such.module:X", "polyroute.providers.darkai:Nope", "json:dumps"]
)
def test_bad_reference_is_a_config_error(reference: str) -> None:
    with pytest.raises(ConfigError, match=r"cannot load|not a polyroute Provider"):
        Registry({"bad": reference}).get("bad")


def test_type_names_must_be_identifiers() -> None:
    with pytest.raises(ConfigError):
        Registry().add("not a name", Echo)


def test_entry_points_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    import polyroute.providers.registry as registry_module

    point = EntryPoint("echo", "tests.providers.test_registry:Echo", "polyroute.providers")
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [point])
    registry = Registry()
    registry.load_entry_points()
    assert registry.get("echo") is Echo


def test_get_model_rules() -> None:
    assert Echo.get_model(None) == Echo.get_model("") == "echo-1"
    assert Echo.get_model("e") == "echo-1"
    assert Echo.get_model("gpt-4o") == "gpt-4o"
    with pytest.raises(ModelNotSupportedError, match=r"'echo'.*echo-1, gpt-4o") as caught:
        Echo.get_model("other")
    assert caught.value.provider == "echo"
    assert caught.value.supported == ["echo-1", "gpt-4o"]
    assert Anything.get_model("whatever") == "whatever"


def test_instance_overrides_shadow_class_attributes_only_for_that_instance() -> None:
    custom = DarkAI(
        name="mine", working=True, models=["x"], model_aliases={"y": "x"}, default_model="x"
    )
    assert custom.working
    assert not DarkAI.working
    assert custom.get_model("y") == "x"
    assert custom.get_model(None) == "x"
    with pytest.raises(ModelNotSupportedError, match="'mine'"):
        custom.get_model("gpt-4o")
    assert DarkAI.get_model("gpt-4o") == "gpt-4o"


def test_default_flags_of_the_base() -> None:
    from polyroute.providers import Provider

    assert (Provider.url, Provider.api_endpoint, Provider.working) == (None, None, False)
    assert Provider.supports_stream is True
    assert AsyncGeneratorProvider.supports_stream is True
    assert (Provider.supports_system_message, Provider.supports_message_history) == (False, False)
    capabilities = (
        Provider.supports_tools,
        Provider.supports_vision,
        Provider.supports_json_schema,
        Provider.supports_prefill,
    )
    assert capabilities == (False, False, False, False)
    assert Provider.needs_auth is False
    assert Provider.default_model is None
    assert Provider.models == []
    assert Provider.model_aliases == {}


def test_restricting_models_moves_the_default_onto_the_list() -> None:
    assert DarkAI(models=["gpt-4o"]).get_model(None) == "gpt-4o"
    assert DarkAI(models=["gpt-4o", "llama-3-70b"]).get_model(None) == "llama-3-70b"
    assert DarkAI(models=["gpt-4o"], default_model="gpt-4o").default_model == "gpt-4o"
