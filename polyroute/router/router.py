"""Router: what users call. It owns the provider entries, the routing policy, the
retry policy, health and statistics; each request is a :class:`RouterStream`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from polyroute.core.errors import (
    ConfigError,
    ModelNotSupportedError,
    PolyrouteError,
    ProviderNotFoundError,
    describe_error,
)
from polyroute.core.http import Timeouts
from polyroute.core.logging import get_logger
from polyroute.core.messages import Messages, normalize_messages
from polyroute.providers.base import AsyncGeneratorProvider
from polyroute.providers.registry import Registry, default_registry
from polyroute.router.config import (
    ProviderEntry,
    RouterConfig,
    RouterSettings,
    RouteSettings,
    TimeoutsConfig,
    load_config,
    validate,
)
from polyroute.router.health import HealthStore, InMemoryHealth
from polyroute.router.policy import Entry, RoutingPolicy
from polyroute.router.retry import RetryPolicy, Sleep
from polyroute.router.stats import StatsBook
from polyroute.router.stream import RouterStream

_log = get_logger()

ProviderSpec = AsyncGeneratorProvider | ProviderEntry | Mapping[str, Any]


class Router:
    """Routes streaming chat requests across provider entries.

    ``providers`` are configured entries (dicts or :class:`ProviderEntry`, built
    through ``registry``) or ready provider instances; list order is the priority
    order unless an entry sets ``priority``. The router owns them all: ``aclose()``
    (or leaving ``async with``) closes their connection pools.
    Raises :class:`ConfigError` for an invalid setting, naming the key.
    """

    def __init__(
        self,
        providers: Sequence[ProviderSpec],
        *,
        registry: Registry | None = None,
        health: HealthStore | None = None,
        sleep: Sleep = asyncio.sleep,
        **settings_keys: Any,
    ) -> None:
        # Every RouterSettings key is a keyword here: aliases=, fallbacks=, retry=,
        # timeouts=, cooldown=, default_model=, on_midstream_failure=, hedge=, order=...
        settings = validate(RouterSettings, settings_keys, "router settings")
        self.settings = settings
        registry = registry or default_registry()
        entries = [
            _build_entry(spec, index, registry, settings.timeouts)
            for index, spec in enumerate(providers)
        ]
        if not entries:
            raise ConfigError("a router needs at least one provider")
        names = [entry.name for entry in entries]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"duplicate provider names: {', '.join(duplicates)}")
        self.policy = RoutingPolicy(entries, aliases=settings.aliases, fallbacks=settings.fallbacks)
        self.retry = RetryPolicy(settings.retry, sleep=sleep)
        self.health: HealthStore = health or InMemoryHealth(
            failures=settings.cooldown.failures, seconds=settings.cooldown.seconds
        )
        self.stats = StatsBook()
        self._route_settings: dict[str, RouteSettings] = {}

    @classmethod
    def from_config(
        cls,
        source: RouterConfig | Mapping[str, Any] | str | Path,
        *,
        registry: Registry | None = None,
        health: HealthStore | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> Router:
        """A router from a ``.yaml``/``.toml``/``.json`` file, a dict or a :class:`RouterConfig`."""
        config = load_config(source)
        settings = config.model_dump(exclude={"providers"}, exclude_unset=True)
        return cls(config.providers, registry=registry, health=health, sleep=sleep, **settings)

    def route_settings(self, model: str) -> RouteSettings:
        """The route settings that apply to requests for ``model`` (computed once)."""
        settings = self._route_settings.get(model)
        if settings is None:
            settings = self._route_settings[model] = self.settings.for_model(model)
        return settings

    @property
    def providers(self) -> list[AsyncGeneratorProvider]:
        """The provider instances, in priority order."""
        return [entry.provider for entry in self.policy.entries]

    def __repr__(self) -> str:
        return f"<Router providers={[e.name for e in self.policy.entries]}>"

    def stream(self, model: str | None, messages: Messages, **params: Any) -> RouterStream:
        """Start routing ``messages`` to ``model``; iterate the result for text.

        An empty or ``None`` model means the configured ``default_model``.
        Raises at once (before any I/O) :class:`InvalidMessagesError` for bad
        messages and :class:`ModelNotSupportedError` for a model no entry serves.
        While iterating: :class:`AllProvidersFailed` when every candidate failed
        before its first chunk, or the upstream's typed error after text was
        delivered. ``params`` go to the provider (sampling options).
        """
        model = model or self.settings.default_model
        if not model:
            raise ModelNotSupportedError("", supported=self.policy.known_models())
        return RouterStream(self, model, normalize_messages(messages), params)

    async def complete(self, model: str | None, messages: Messages, **params: Any) -> str:
        """The whole answer as one string, routed like :meth:`stream`."""
        async with self.stream(model, messages, **params) as stream:
            return "".join([text async for text in stream])

    async def discover_models(self) -> None:
        """Ask entries configured with ``models: discover`` for their model lists, in parallel.

        An entry whose upstream does not answer keeps serving any model name and logs
        ``provider.discovery_failed``; the router still starts.
        """
        entries = [entry for entry in self.policy.entries if entry.discover]
        results = await asyncio.gather(
            *(entry.provider.discover_models() for entry in entries), return_exceptions=True
        )
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, PolyrouteError):
                _log.warning(
                    "provider.discovery_failed", provider=entry.name, **describe_error(result)
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                _log.info("provider.models_discovered", provider=entry.name, models=len(result))

    async def aclose(self) -> None:
        """Close every provider's connection pool."""
        await asyncio.gather(*(provider.aclose() for provider in self.providers))

    async def __aenter__(self) -> Router:
        await self.discover_models()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _build_entry(
    spec: ProviderSpec, index: int, registry: Registry, defaults: TimeoutsConfig
) -> Entry:
    if isinstance(spec, AsyncGeneratorProvider):
        return Entry(spec)
    entry = validate(ProviderEntry, spec, f"providers.{index}")
    try:
        provider_class = registry.get(entry.type)
    except ProviderNotFoundError as error:
        raise ConfigError(f"providers.{index}.type: {error}") from None
    overrides = entry.timeouts.model_dump(exclude_unset=True)
    kwargs: dict[str, Any] = {
        "name": entry.name,
        "timeout": Timeouts(**{**defaults.model_dump(), **overrides}),
        "headers": entry.headers,
        "connection_limit": entry.connection_limit,
    }
    optional = {
        **entry.options,
        "api_endpoint": entry.api_endpoint,
        "base_url": entry.base_url,
        "proxy": entry.proxy,
        "working": entry.working,
        "default_model": entry.default_model,
        "models": None if entry.models == "discover" else entry.models,
        "model_aliases": entry.model_aliases,
    }
    kwargs.update({key: value for key, value in optional.items() if value is not None})
    if entry.api_key_env:
        kwargs["api_key"] = os.environ.get(entry.api_key_env)
        if not kwargs["api_key"]:
            raise ConfigError(
                f"provider {entry.name!r}: environment variable {entry.api_key_env} "
                "(api_key_env) is not set"
            )
    try:
        provider = provider_class(**kwargs)
    except TypeError as error:
        raise ConfigError(
            f"providers.{index} ({entry.name!r}, type {entry.type!r}): {error}"
        ) from None
    return Entry(provider, entry.priority, discover=entry.models == "discover")
