"""The registry: provider type names (``"darkai"``) mapped to provider classes.

Built-in providers are listed in one table and imported only when first asked
for; third-party packages add theirs through the ``polyroute.providers`` entry-point
group (``mytype = "my_package.module:MyProvider"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from functools import cache
from importlib.metadata import entry_points
from typing import TypeVar

from polyroute.core.errors import ConfigError, ProviderNotFoundError
from polyroute.providers.base import Provider

ENTRY_POINT_GROUP = "polyroute.providers"

BUILTIN_PROVIDERS: dict[str, str] = {
    "anthropic": "polyroute.providers.anthropic:Anthropic",
    "darkai": "polyroute.providers.darkai:DarkAI",
    "gemini": "polyroute.providers.gemini:Gemini",
    "openai": "polyroute.providers.openai:OpenAI",
    "simulated": "polyroute.providers.simulated:Simulated",
}

_P = TypeVar("_P", bound=type[Provider])


class Registry:
    """Provider classes by type name.

    Values may be classes or ``"module:Class"`` references, resolved on first use
    so that listing a provider costs no import.
    """

    def __init__(self, providers: dict[str, type[Provider] | str] | None = None) -> None:
        self._entries: dict[str, type[Provider] | str] = {}
        for name, provider in (providers or {}).items():
            self.add(name, provider)

    def add(self, name: str, provider: type[Provider] | str) -> None:
        """Register ``provider`` under ``name`` (replacing an earlier entry)."""
        if not name or not name.isidentifier():
            raise ConfigError(f"provider type name {name!r} must be a Python identifier")
        self._entries[name] = provider

    def register(self, name: str) -> Callable[[_P], _P]:
        """Class decorator: ``@registry.register("mytype")``."""

        def decorate(provider: _P) -> _P:
            self.add(name, provider)
            return provider

        return decorate

    def names(self) -> list[str]:
        """Every registered type name, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> type[Provider]:
        """The class registered as ``name``; :class:`ProviderNotFoundError` lists the known ones."""
        try:
            entry = self._entries[name]
        except KeyError:
            raise ProviderNotFoundError(name, self.names()) from None
        if isinstance(entry, str):
            entry = self._entries[name] = _import(entry)
        return entry

    def __iter__(self) -> Iterator[type[Provider]]:
        return (self.get(name) for name in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def providers_for(self, model: str) -> list[type[Provider]]:
        """Classes whose ``get_model`` accepts ``model`` (a model name or one of their aliases)."""
        return [provider for provider in self if provider.serves(model)]

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Add the providers that installed packages declare in ``group``."""
        for point in entry_points(group=group):
            self.add(point.name, point.value)


def _import(reference: str) -> type[Provider]:
    module_name, _, attribute = reference.partition(":")
    try:
        provider = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"cannot load provider {reference!r}: {error}") from error
    if not (isinstance(provider, type) and issubclass(provider, Provider)):
        raise ConfigError(f"{reference!r} is not a polyroute Provider subclass")
    return provider


@cache
def default_registry() -> Registry:
    """The registry of built-in providers plus installed entry points (built once)."""
    registry = Registry(dict(BUILTIN_PROVIDERS))
    registry.load_entry_points()
    return registry
