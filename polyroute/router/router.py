"""Router and RouterStream: what users call.

One request walks the model chain (the resolved model, then its fallbacks); for
each model it tries the candidate entries in priority order, retrying retryable
errors on the same entry before moving on. Until the first chunk, failures are
invisible to the caller (they show in events and ``stream.attempts``); after it,
a failure is raised with the partial text kept on the stream.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tenacity import RetryCallState

from polyroute.core.attempts import Attempt
from polyroute.core.errors import (
    AllProvidersFailed,
    AuthenticationError,
    ConfigError,
    InvalidRequestError,
    ModelNotSupportedError,
    PolyrouteError,
    ProviderNotFoundError,
    UpstreamError,
    UpstreamStatusError,
    describe_error,
)
from polyroute.core.http import Timeouts
from polyroute.core.logging import get_logger
from polyroute.core.messages import Message, Messages, normalize_messages
from polyroute.providers.base import AsyncGeneratorProvider
from polyroute.providers.registry import Registry, default_registry
from polyroute.router.config import (
    ProviderEntry,
    RouterConfig,
    RouterSettings,
    TimeoutsConfig,
    load_config,
    validate,
)
from polyroute.router.health import HealthStore, InMemoryHealth
from polyroute.router.policy import Candidate, Entry, RoutingPolicy
from polyroute.router.retry import RetryPolicy, Sleep

_log = get_logger()

ProviderSpec = AsyncGeneratorProvider | ProviderEntry | Mapping[str, Any]


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def counts_against_health(error: BaseException) -> bool:
    """Whether a failure says something about the provider rather than the request.

    A 400 or 413 answer would come from any provider for the same request, so it
    must not cool the entry down for everybody else; refused credentials do.
    """
    if isinstance(error, AuthenticationError):
        return True
    if isinstance(error, UpstreamStatusError):
        return error.retryable
    return isinstance(error, UpstreamError)


class RouterStream:
    """One routed answer: iterate it for text, read what happened from its fields.

    - ``provider``, ``model``: the entry that served the answer and the upstream model
      name (``None`` until the first chunk);
    - ``attempts``: every try in order (:class:`polyroute.Attempt`);
    - ``text``: the text delivered so far (the partial text after a failure);
    - ``finish_reason``, ``usage``: as the serving upstream reported them (or ``None``).

    Iterate it once. Leaving the loop early (``break``), cancelling the task, or
    ``await stream.aclose()`` closes the upstream response at once; ``async with``
    closes it on exit.
    """

    def __init__(
        self, router: Router, requested: str, messages: list[Message], params: dict[str, Any]
    ) -> None:
        self.request_id = uuid.uuid4().hex
        self.requested_model = requested
        self.provider: str | None = None
        self.model: str | None = None
        self.attempts: list[Attempt] = []
        self._router = router
        self._chain = router.policy.model_chain(requested)
        self._messages = messages
        self._params = params
        self._parts: list[str] = []
        # `async for` gets the generator itself and the stream keeps only a weak
        # reference: after a `break` nothing holds it, so it is finalized (and the
        # upstream closed) at once instead of when the stream object is dropped.
        self._generator: weakref.ref[AsyncGenerator[str, None]] | None = None
        self._held: AsyncGenerator[str, None] | None = None

    @property
    def text(self) -> str:
        """All text delivered so far."""
        return "".join(self._parts)

    @property
    def finish_reason(self) -> str | None:
        """Why the serving upstream stopped (``"stop"``, ``"length"``...), when it said."""
        serving = self._serving_attempt()
        return serving.report.finish_reason if serving else None

    @property
    def usage(self) -> dict[str, Any] | None:
        """Token usage reported by the serving upstream, when it sent it."""
        serving = self._serving_attempt()
        return serving.report.usage if serving else None

    def _serving_attempt(self) -> Attempt | None:
        if self.provider is None:
            return None
        return next((a for a in reversed(self.attempts) if a.provider == self.provider), None)

    def __repr__(self) -> str:
        return (
            f"<RouterStream {self.request_id[:8]} model={self.requested_model!r} "
            f"provider={self.provider!r} attempts={len(self.attempts)}>"
        )

    def __aiter__(self) -> AsyncGenerator[str, None]:
        if self._held is not None:
            return self._held
        if self._generator is not None:
            raise RuntimeError("a RouterStream can be iterated only once")
        generator = self._route()
        self._generator = weakref.ref(generator)
        return generator

    async def __anext__(self) -> str:
        if self._held is None:
            self._held = self.__aiter__()
        return await anext(self._held)

    async def aclose(self) -> None:
        """Stop the stream and close the upstream response. Safe to call twice."""
        generator = self._held or (self._generator() if self._generator else None)
        if generator is not None:
            await generator.aclose()

    async def __aenter__(self) -> RouterStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _route(self) -> AsyncGenerator[str, None]:
        router = self._router
        log = _log.bind(request_id=self.request_id)
        started = time.perf_counter()
        candidates, excluded = router.policy.candidates(self._chain[0], router.health)
        log.info(
            "route.start",
            requested_model=self.requested_model,
            model=self._chain[0],
            fallbacks=self._chain[1:],
            candidates=[candidate.name for candidate in candidates],
        )
        reasons: list[str] = []
        try:
            for candidate in self._walk(candidates, excluded, reasons, log):
                opened = await self._open(candidate, log)
                if opened is None:
                    continue
                generator, first, attempt = opened
                self.provider, self.model = candidate.name, candidate.upstream_model
                try:
                    if first is not None:
                        log.info(
                            "stream.first_chunk",
                            provider=candidate.name,
                            model=candidate.upstream_model,
                            ttft_ms=attempt.ttft_ms,
                        )
                        self._parts.append(first)
                        yield first
                        async for text in generator:
                            self._parts.append(text)
                            yield text
                except PolyrouteError as error:
                    # Text already reached the caller: raise, keeping the partial text.
                    self._fail(attempt, candidate, error, log)
                    log.warning(
                        "route.failed",
                        model=self.requested_model,
                        attempts=len(self.attempts),
                        chars=sum(map(len, self._parts)),
                        duration_ms=_ms(started),
                        **describe_error(error),
                    )
                    raise
                finally:
                    await generator.aclose()
                self._succeed(attempt, candidate, log, started)
                return
        except (GeneratorExit, asyncio.CancelledError):
            self._cancel(log, started)
            raise
        exhausted = AllProvidersFailed(self.requested_model, self.attempts, reasons)
        log.warning(
            "route.failed",
            model=self.requested_model,
            attempts=len(self.attempts),
            reasons=reasons,
            duration_ms=_ms(started),
            error_type="AllProvidersFailed",
        )
        raise exhausted

    def _walk(
        self,
        candidates: list[Candidate],
        excluded: list[str],
        reasons: list[str],
        log: Any,
    ) -> Iterator[Candidate]:
        """Admitted candidates across the model chain, in order; the first model's
        ``candidates`` and ``excluded`` are given, the rest computed when reached.
        Appends to ``reasons`` why each skipped entry was skipped."""
        router = self._router
        previous: Candidate | None = None
        for index, model in enumerate(self._chain):
            if index:
                candidates, excluded = router.policy.candidates(model, router.health)
            reasons += excluded
            for candidate in candidates:
                if previous is not None:
                    log.info(
                        "route.fallback",
                        from_provider=previous.name,
                        from_model=previous.model,
                        to_provider=candidate.name,
                        to_model=candidate.model,
                    )
                previous = candidate
                if router.health.admit(candidate.name):
                    yield candidate
                else:
                    reasons.append(f"{candidate.name} ({model}): cooling down")

    async def _open(
        self, candidate: Candidate, log: Any
    ) -> tuple[AsyncGenerator[str, None], str | None, Attempt] | None:
        """Try ``candidate`` (with retries) up to its first chunk; None when it failed."""
        router = self._router

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.info(
                "attempt.retry",
                provider=candidate.name,
                model=candidate.upstream_model,
                delay_s=round(state.upcoming_sleep, 3),
                **(describe_error(error) if error else {}),
            )

        retrying = router.retry.retrying(
            give_up=lambda: router.health.state(candidate.name) != "closed",
            before_sleep=before_sleep,
        )
        try:
            result: tuple[AsyncGenerator[str, None], str | None, Attempt] = await retrying(
                self._try_once, candidate, log
            )
        except InvalidRequestError:
            raise  # the caller's mistake: no other provider would take it either
        except PolyrouteError:
            return None  # recorded in self.attempts and logged by _try_once
        return result

    async def _try_once(
        self, candidate: Candidate, log: Any
    ) -> tuple[AsyncGenerator[str, None], str | None, Attempt]:
        attempt = Attempt(candidate.name, candidate.upstream_model)
        self.attempts.append(attempt)
        log.info(
            "attempt.start",
            provider=candidate.name,
            model=candidate.upstream_model,
            attempt=len(self.attempts),
        )
        generator = candidate.entry.provider.create_async_generator(
            candidate.upstream_model, self._messages, report=attempt.report, **self._params
        )
        try:
            first = await anext(generator, None)
        except PolyrouteError as error:
            self._fail(attempt, candidate, error, log)
            raise
        attempt.ttft_ms = attempt.elapsed_ms()
        return generator, first, attempt

    def _succeed(self, attempt: Attempt, candidate: Candidate, log: Any, started: float) -> None:
        attempt.outcome = "ok"
        attempt.duration_ms = attempt.elapsed_ms()
        attempt.chars = sum(map(len, self._parts))
        self._router.health.record_success(candidate.name)
        log.info(
            "route.done",
            provider=candidate.name,
            model=candidate.upstream_model,
            chunks=len(self._parts),
            chars=attempt.chars,
            duration_ms=_ms(started),
        )

    def _fail(
        self, attempt: Attempt, candidate: Candidate, error: PolyrouteError, log: Any
    ) -> None:
        attempt.outcome = "failed"
        attempt.error = error
        attempt.duration_ms = attempt.elapsed_ms()
        attempt.chars = sum(map(len, self._parts))
        log.warning(
            "attempt.failed",
            provider=candidate.name,
            model=candidate.upstream_model,
            **describe_error(error),
        )
        health = self._router.health
        if counts_against_health(error) and health.record_failure(candidate.name):
            log.warning(
                "provider.cooldown",
                provider=candidate.name,
                seconds=self._router.settings.cooldown.seconds,
            )

    def _cancel(self, log: Any, started: float) -> None:
        for attempt in self.attempts:
            if attempt.outcome == "running":
                attempt.outcome = "cancelled"
                self._router.health.release(attempt.provider)
        log.info(
            "route.cancelled",
            provider=self.provider,
            chars=sum(map(len, self._parts)),
            duration_ms=_ms(started),
        )


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
        default_model: str | None = None,
        aliases: Mapping[str, str] | None = None,
        fallbacks: Mapping[str, Sequence[str]] | None = None,
        retry: Any = None,
        timeouts: Any = None,
        cooldown: Any = None,
        registry: Registry | None = None,
        health: HealthStore | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        given = {
            "default_model": default_model,
            "aliases": aliases,
            "fallbacks": fallbacks,
            "retry": retry,
            "timeouts": timeouts,
            "cooldown": cooldown,
        }
        settings = validate(RouterSettings, {k: v for k, v in given.items() if v is not None})
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
        return cls(
            config.providers,
            default_model=config.default_model,
            aliases=config.aliases,
            fallbacks=config.fallbacks,
            retry=config.retry,
            timeouts=config.timeouts,
            cooldown=config.cooldown,
            registry=registry,
            health=health,
            sleep=sleep,
        )

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
