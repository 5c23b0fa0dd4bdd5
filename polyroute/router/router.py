"""Router: what users call. It owns the provider entries, the routing policy, the
retry policy, health and statistics; each request is a :class:`RouterStream`."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from polyroute.core.attempts import Attempt
from polyroute.core.deltas import AssistantMessage, TextDelta
from polyroute.core.embeddings import Embedded, Embeddings, EncodingFormat
from polyroute.core.errors import (
    ConfigError,
    InvalidRequestError,
    ModelNotSupportedError,
    PolyrouteError,
    ProviderNotFoundError,
    describe_error,
)
from polyroute.core.http import Timeouts
from polyroute.core.logging import get_logger, new_request_id
from polyroute.core.messages import Messages
from polyroute.core.pricing import FREE, Price, load_catalogue
from polyroute.core.request import (
    CHARS_PER_TOKEN,
    ChatRequest,
    NativeRequest,
    estimated_input_tokens,
)
from polyroute.core.wire import WireFormat, relayable_formats
from polyroute.providers.base import Provider
from polyroute.providers.registry import Registry, default_registry
from polyroute.router.affinity import affinity_plan
from polyroute.router.attempts import AttemptEngine
from polyroute.router.budget import BudgetKeeper, BudgetPlan, cost_ceiling, remaining_usd
from polyroute.router.cache import CachePlan, ResponseCache, build_cache, cache_key
from polyroute.router.config import (
    Limits,
    ProviderEntry,
    RouterConfig,
    RouterSettings,
    RouteSettings,
    TimeoutsConfig,
    load_config,
    validate,
)
from polyroute.router.context import RouteContext
from polyroute.router.health import HealthStore
from polyroute.router.health import describe as describe_health
from polyroute.router.observe import (
    NO_LABELS,
    NO_WATCHES,
    RecordStatus,
    RequestLabels,
    RequestObserver,
    RequestRecord,
    RequestStart,
    Watches,
    build_record,
    is_cancellation,
    notify,
    watch_request,
)
from polyroute.router.policy import Candidate, Entry, RoutingPolicy, unusable
from polyroute.router.retry import RetryPolicy, Sleep
from polyroute.router.state import BudgetLimit, Denied, Lease, RoutingState, build_state
from polyroute.router.stats import EntryStats, StatsBook
from polyroute.router.stream import RouterStream, estimate_tokens

_log = get_logger()

ProviderSpec = Provider | ProviderEntry | Mapping[str, Any]
# ProviderEntry keys the router itself reads; every other key is a provider attribute
# and goes to the provider's constructor by its own name.
_ROUTER_KEYS = {
    "name",
    "type",
    "priority",
    "api_key_env",
    "timeouts",
    "options",
    "models",
    "tool_calls",
    "weight",
    "limits",
    "price",
}


@dataclass(frozen=True, slots=True)
class EntryStatus:
    """One provider entry as the router sees it now (:meth:`Router.entry_status`)."""

    name: str
    type: str
    working: bool
    supports_stream: bool
    health: str
    """The circuit in words: ``healthy``, ``cooling down (12 s left)``, ``on trial ...``."""
    unusable: str | None
    """Why it cannot serve a request now (``no key: X is not set``, ``not working``,
    ``cooling down (12 s left)``...), or ``None``: the rule routing itself applies."""
    endpoint: str | None
    stats: EntryStats
    """This process's figures (time to first chunk, speed, error rate)."""
    missing_key: str | None
    discovery_error: str | None
    models: list[str]
    """The models it lists (empty: it takes any name)."""
    cooling_down: bool
    """Its circuit is open (across every process sharing the state)."""
    in_flight: int = 0
    """Its attempts running now (across every process sharing the state)."""
    limits: Limits | None = None
    """Its configured ``rpm``, ``tpm`` and ``concurrent``, if any."""

    @property
    def usable(self) -> bool:
        return self.unusable is None


@dataclass(frozen=True, slots=True)
class EntryCheck:
    """What :meth:`Router.check_entry` found: the ``model`` asked, and the times to the
    first chunk and to the whole answer, or the ``error`` of the last attempt."""

    model: str
    first_chunk_ms: float | None = None
    total_ms: float | None = None
    error: PolyrouteError | None = None


class TokenCount(NamedTuple):
    """What :meth:`Router.count_tokens` found: ``input_tokens``, whether the upstream
    counted them (``exact``) or they were estimated, and the entry asked (or ``None``)."""

    input_tokens: int
    exact: bool
    provider: str | None


class Router:
    """Routes streaming chat requests across provider entries.

    ``providers`` are configured entries (dicts or :class:`ProviderEntry`, built
    through ``registry``) or ready provider instances; list order is the priority
    order unless an entry sets ``priority``. The router owns them all: ``aclose()``
    (or leaving ``async with``) closes their connection pools. ``observers`` are told
    of every request once it ends (:class:`RequestObserver`; :meth:`observe` adds one).
    Raises :class:`ConfigError` for an invalid setting, naming the key.
    """

    def __init__(
        self,
        providers: Sequence[ProviderSpec],
        *,
        registry: Registry | None = None,
        health: HealthStore | None = None,
        sleep: Sleep = asyncio.sleep,
        observers: Sequence[RequestObserver] = (),
        **settings_keys: Any,
    ) -> None:
        # Every RouterSettings key is a keyword here: aliases=, fallbacks=, retry=,
        # timeouts=, cooldown=, default_model=, on_midstream_failure=, hedge=, order=...
        settings = validate(RouterSettings, settings_keys, "router settings")
        registry = registry or default_registry()
        built = _build_entries(providers, registry, settings.timeouts, {})
        policy = _policy(built, settings)
        state = build_state(
            settings.state,
            health=health,
            names=[entry.name for entry, _ in built],
            failures=settings.cooldown.failures,
            cooldown_seconds=settings.cooldown.seconds,
            limits={entry.name: entry.limits for entry, _ in built if entry.limits},
            budget=settings.retry.budget,
        )
        shared = _Shared(
            state,
            BudgetKeeper(state),
            build_cache(settings.cache, settings.state.url),
            list(observers),
        )
        self._assemble(settings, built, policy, shared, registry, sleep)

    def _assemble(
        self,
        settings: RouterSettings,
        built: list[_Built],
        policy: RoutingPolicy,
        shared: _Shared,
        registry: Registry,
        sleep: Sleep,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.retry = RetryPolicy(settings.retry, sleep=sleep)
        self.state: RoutingState = shared.state
        for entry, _ in built:
            entry.provider.on_rate_limit = self._upstream_exhausted
        self.discovery_errors: dict[str, str] = {}
        """Why an entry's ``models: discover`` failed, by entry name."""
        self._contexts: dict[str, RouteContext] = {}
        self.budgets = shared.budgets
        """Reservations on gateway keys' and teams' budgets (``budget=`` of a request)."""
        self.cache = shared.cache
        """The response cache (``cache:`` in the settings), or ``None``."""
        self._observers = shared.observers
        self._built = {entry.name: recipe for entry, recipe in built}
        self._registry = registry
        self._sleep = sleep

    @classmethod
    def from_config(
        cls,
        source: RouterConfig | Mapping[str, Any] | str | Path,
        *,
        registry: Registry | None = None,
        health: HealthStore | None = None,
        sleep: Sleep = asyncio.sleep,
        observers: Sequence[RequestObserver] = (),
    ) -> Router:
        """A router from a ``.yaml``/``.toml``/``.json`` file, a dict or a :class:`RouterConfig`."""
        config = load_config(source)
        settings = _settings_of(config)
        return cls(
            config.providers,
            registry=registry,
            health=health,
            sleep=sleep,
            observers=observers,
            **settings,
        )

    def reconfigured(self, source: RouterConfig | Mapping[str, Any] | str | Path) -> Router:
        """A router for a new configuration that carries on from this one (a config
        reload): it shares this router's routing state (circuits, limit windows, the
        retry budget, budgets' spend, records), response cache, budget keeper and
        observers, and the provider instance, connection pool included, of every entry
        whose connection settings did not change (its name, type and the keys its
        provider is built from; priority, weight, limits, price and ``tool_calls`` may
        change).
        ``state`` and ``cache`` stay this router's: changing them needs a new router.

        Nothing is shared until :meth:`take_over`, and nothing of this router changes
        before: requests keep using it as they were. The caller then owns this router's
        providers that :attr:`providers` of the new one leaves out (close them once the
        requests on this router are over), and must not ``aclose()`` this router, whose
        state the new one uses. Raises :class:`ConfigError` as :meth:`from_config` does.
        """
        config = load_config(source)
        keys = {**_settings_of(config), "state": self.settings.state, "cache": self.settings.cache}
        settings = validate(RouterSettings, keys, "router settings")
        kept = {entry.name: (self._built[entry.name], entry) for entry in self.policy.entries}
        built = _build_entries(config.providers, self._registry, settings.timeouts, kept)
        policy = _policy(built, settings)
        shared = _Shared(self.state, self.budgets, self.cache, self._observers)
        router = type(self).__new__(type(self))  # its state is this one's, never built
        router._assemble(settings, built, policy, shared, self._registry, self._sleep)
        return router

    def take_over(self) -> None:
        """Make this router's entries, their limits, the cooldown and the retry budget
        the shared routing state's (see :meth:`reconfigured`): synchronous and without
        I/O, so that no request sees half of it."""
        settings = self.settings
        self.state.reconfigure(
            names=[entry.name for entry in self.policy.entries],
            failures=settings.cooldown.failures,
            cooldown_seconds=settings.cooldown.seconds,
            limits={entry.name: entry.limits for entry in self.policy.entries if entry.limits},
            budget=settings.retry.budget,
        )

    def _upstream_exhausted(self, name: str, seconds: float) -> None:
        _log.info("provider.rate_limited", provider=name, seconds=round(seconds, 3))
        self.state.block(name, seconds, "upstream reports no requests or tokens left")

    def route_settings(self, model: str) -> RouteSettings:
        """The route settings that apply to requests for ``model``."""
        return self._context_for(model).settings

    def _context_for(self, model: str) -> RouteContext:
        # One context per per_model key (a name or a pattern), one shared by all other
        # models: callers choose model names, so a context per name would grow unbounded.
        key = self.settings.per_model_key(model) or ""
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = RouteContext(
                self.policy,
                self.retry,
                self.state,
                self.settings.cooldown.seconds,
                self.settings.for_model(model),
                self.budgets,
                self._observers,
            )
        return context

    @property
    def stats(self) -> StatsBook:
        """This process's figures per entry (part of :attr:`state`)."""
        return self.state.stats

    @property
    def health(self) -> HealthStore:
        """The entries' circuits (part of :attr:`state`)."""
        return self.state

    def entry_status(self) -> list[EntryStatus]:
        """Every entry in priority order, with whether it can serve now and why not:
        what ``/readyz`` and ``polyroute providers`` report, by the rule routing uses."""
        return [
            EntryStatus(
                name=entry.name,
                type=entry.provider.type_name or type(entry.provider).__name__,
                working=entry.provider.working,
                supports_stream=entry.provider.supports_stream,
                health=describe_health(self.state, entry.name),
                unusable=unusable(entry, self.state),
                endpoint=entry.provider.api_endpoint,
                stats=self.state.stats[entry.name],
                missing_key=entry.missing_key,
                discovery_error=self.discovery_errors.get(entry.name),
                models=list(entry.provider.models),
                cooling_down=self.state.state(entry.name) == "open",
                in_flight=self.state.load(entry.name).in_flight,
                limits=entry.limits,
            )
            for entry in self.policy.entries
        ]

    def serving(self, model: str) -> list[str]:
        """The entries that serve ``model`` (a model name, not an alias), in order."""
        return [entry.name for entry, _ in self.policy.serving(model)]

    @property
    def default_model(self) -> str | None:
        """The model of a request that names none (``default_model``)."""
        return self.settings.default_model

    @property
    def records(self) -> RoutingState:
        """Where what outlives a request is kept (stored responses): the routing
        state's records, shared by every process when the state is."""
        return self.state

    def describe_state(self) -> str:
        """For people: the state backend, and whether it is reachable."""
        return self.state.describe_backend()

    def state_figures(self) -> tuple[bool, dict[str, int]]:
        """Whether the shared state is unreachable (this process deciding alone), and
        the decisions that needed it, by where they were taken."""
        return self.state.degraded, dict(self.state.decisions)

    async def check_entry(self, name: str) -> EntryCheck:
        """One tiny request (``ping``) to entry ``name``, for the first model it lists
        (or its default), through the attempt engine like a routed request: retries,
        health, statistics and events alike (``polyroute providers --check``)."""
        entry = next(entry for entry in self.policy.entries if entry.name == name)
        provider = entry.provider
        model = (provider.models[0] if provider.models else provider.default_model) or ""
        candidate = Candidate(entry, model, provider.get_model(model), name)
        request = ChatRequest.build([{"role": "user", "content": "ping"}], {})
        engine = AttemptEngine(
            self._context_for(model),
            request_id=new_request_id(),
            requested_model=model,
            chain=[model],
            needs=frozenset(),
            estimate=lambda: estimate_tokens(request),
            attempts=[],
        )

        async def whole_answer(attempt: Attempt, lease: Lease) -> int:
            chars = 0
            try:
                async for batch in provider.stream_batches(candidate.upstream_model, request):
                    if attempt.ttft_ms is None:
                        attempt.ttft_ms = attempt.elapsed_ms()
                        self.state.stats[name].record_first_chunk(attempt.ttft_ms)
                    chars += sum(len(d.text) for d in batch if isinstance(d, TextDelta))
            finally:
                lease.end()
            return chars

        chars = await engine.attempt(candidate, whole_answer)
        attempt = engine.attempts[-1] if engine.attempts else None
        if chars is None or attempt is None:
            error = attempt.error if attempt is not None else None
            reason = engine.reasons[-1] if engine.reasons else "not tried"
            failure = error if isinstance(error, PolyrouteError) else PolyrouteError(reason)
            return EntryCheck(candidate.upstream_model, error=failure)
        engine.succeed(attempt, candidate, attempt_chars=chars, chars=chars)
        return EntryCheck(candidate.upstream_model, attempt.ttft_ms, attempt.duration_ms)

    def known_models(self, allowed: Callable[[str], bool] | None = None) -> list[str]:
        """The names the router can route (models, aliases but patterns, fallback
        chains), only those ``allowed`` says yes to when given (a gateway key's)."""
        names = self.policy.known_models()
        return names if allowed is None else [name for name in names if allowed(name)]

    def resolve_model(self, name: str) -> str:
        """``name`` through the router's aliases (exact names, then patterns)."""
        return self.policy.resolve_alias(name)

    async def admit_key(self, key: str, rpm: int) -> float | None:
        """Count one request of gateway key ``key`` under its ``rpm`` (across every
        process sharing the state): ``None`` when admitted, else the seconds to wait."""
        return await self.state.admit_key(key, rpm)

    async def admit_key_tokens(self, key: str, tpm: int, tokens: int) -> Lease | Denied:
        """Count ``tokens`` of gateway key ``key`` under its ``tpm`` (across every process
        sharing the state): a lease whose ``end(used)`` counts what the request did use,
        or why there is no room (and for how long)."""
        return await self.state.admit_key_tokens(key, tpm, tokens)

    def budget_spent(self, scope: str, limit: BudgetLimit) -> float:
        """USD settled on a budget ``scope`` in its current period, as this process last
        heard (no I/O; best effort with a shared state)."""
        return self.state.spent(scope, limit)

    def observe(self, observer: RequestObserver) -> None:
        """Tell ``observer`` of every request from now on, once each ends (with the
        routers made from this one by :meth:`reconfigured`, which share its observers)."""
        self._observers.append(observer)

    def on_announcement(self, topic: str, listener: Callable[[], None]) -> bool:
        """Call ``listener`` whenever any process sharing the state (this one included)
        announces ``topic``; whether other processes' announcements reach this one."""
        return self.state.listen(topic, listener)

    async def announce(self, topic: str) -> None:
        """Tell every process sharing the state that ``topic`` happened (best effort:
        lost while a shared state is unreachable, so listeners must not rely on it
        alone)."""
        await self.state.announce(topic)

    @property
    def providers(self) -> list[Provider]:
        """The provider instances, in priority order."""
        return [entry.provider for entry in self.policy.entries]

    def __repr__(self) -> str:
        return f"<Router providers={[e.name for e in self.policy.entries]}>"

    def stream(
        self,
        model: str | None,
        messages: Messages,
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
        extra_body: dict[str, Any] | None = None,
        request_id: str | None = None,
        native: NativeRequest | None = None,
        cache: str | None = None,
        budget: BudgetPlan | None = None,
        labels: RequestLabels | None = None,
        headers: Mapping[str, str] | None = None,
        pass_through: WireFormat | Collection[WireFormat] | None = None,
        **options: Any,
    ) -> RouterStream:
        """Start routing ``messages`` to ``model``; iterate the result for text, or
        ``stream.deltas()`` for every typed delta.

        An empty or ``None`` model means the configured ``default_model``. ``options``
        are OpenAI's request options (``temperature``, ``max_tokens``, ``stop``,
        ``seed``, ``parallel_tool_calls``...); provider-specific keys go in
        ``extra_body``. ``request_id`` (generated when not given) is carried by every
        event of the request. ``native`` is the client's own request in an upstream's
        format, of which ``messages`` and ``options`` are the translation: entries of
        that format send it as it was written (the gateway's ``/v1/messages``).
        ``cache`` (``use``, ``refresh``, ``off``; else the model's ``per_model`` cache,
        else ``off``) is how the request uses the response cache (docs/cache.md); with
        no ``cache`` configured, it is off. ``budget`` holds the request to budgets: the
        most it may cost is reserved before its first attempt (the first iteration
        raises :class:`BudgetExceededError` when a budget has no room) and settled at
        its cost when it ends (docs/governance.md). ``labels`` go into the request's
        record, which observers get when it ends (docs/observability.md). ``headers``
        are the client's request headers, read only for an ``affinity`` keyed by one
        (``by: header:NAME``, docs/router.md#affinity). ``pass_through="openai"``: the
        consumer speaks OpenAI's chat chunks, so an OpenAI-format entry's plain text
        chunks come as :class:`WireDelta` runs of the upstream's own bytes (the gateway's
        chat completions; docs/router.md#pass-through); ``"anthropic"``: likewise, an
        Anthropic entry's text deltas, for a consumer of Messages events; several
        formats (``("anthropic", "openai")``): any of them, for a consumer that writes
        the runs' ``texts`` in its own events when they are not in its format; every
        other delta is as without it. Raises at once (before any I/O)
        :class:`InvalidRequestError` for a bad argument (:class:`InvalidMessagesError`
        for bad messages), :class:`ModelNotSupportedError` for a model no entry serves and
        :class:`CapabilityNotSupportedError` when no entry serving it can do what the
        request needs (tools, images, JSON schemas). While iterating:
        :class:`AllProvidersFailed` when every candidate failed before its first chunk,
        or the upstream's typed error after part of the answer was delivered.
        """
        model = self._requested(model)
        relayable = relayable_formats(pass_through)
        given = {
            "tools": tools,
            "tool_choice": tool_choice,
            "response_format": response_format,
            "extra_body": extra_body,
        }
        options.update({key: value for key, value in given.items() if value is not None})
        request = ChatRequest.build(messages, options, native)
        chain = self.policy.model_chain(model, request.needs)
        plan = self._cache_plan(cache, chain[0], request)
        context = self._context_for(chain[0])
        return RouterStream(
            context,
            request,
            model,
            chain,
            request_id,
            caching=plan,
            budget=budget,
            labels=labels,
            affinity=affinity_plan(context.settings.affinity, chain[0], request, headers),
            pass_through=relayable,
        )

    def _requested(self, model: str | None) -> str:
        """The model a request names, or ``default_model``; raises
        :class:`InvalidRequestError` for a name that is not a string and
        :class:`ModelNotSupportedError` when there is none."""
        if model is not None and not isinstance(model, str):
            raise InvalidRequestError(
                f"model must be a string (a model name or alias), got {type(model).__name__}"
            )
        model = model or self.settings.default_model
        if not model:
            raise ModelNotSupportedError("", supported=self.policy.known_models())
        return model

    def _cache_plan(self, mode: str | None, model: str, request: ChatRequest) -> CachePlan | None:
        if mode is not None and mode not in ("use", "refresh", "off"):
            raise InvalidRequestError(f"cache must be use, refresh or off, got {mode!r}")
        key = self.settings.per_model_key(model) if mode is None else None
        if key is not None:
            mode = self.settings.per_model[key].cache
        if self.cache is None or mode is None or mode == "off":
            return None
        return CachePlan(
            self.cache, "use" if mode == "use" else "refresh", cache_key(model, request)
        )

    async def count_tokens(
        self,
        model: str | None,
        messages: Messages,
        *,
        native: NativeRequest | None = None,
        **options: Any,
    ) -> TokenCount:
        """The input tokens of a request for ``model`` (arguments as :meth:`stream`).

        The entry that would serve the request first counts them exactly when its type
        can (Anthropic's own endpoint); otherwise, or when that count fails (logged as
        ``tokens.count_failed``), they are estimated at 4.5 characters a token.
        Raises as :meth:`stream` does for a bad request or an unknown model.
        """
        model = self._requested(model)
        request = ChatRequest.build(messages, options, native)
        first = None
        for name in self.policy.model_chain(model, request.needs):
            candidates, _ = self.policy.candidates(name, self.state, needs=request.needs)
            if candidates:
                first = candidates[0]
                break
        if first is not None:
            try:
                exact = await first.entry.provider.count_tokens(first.upstream_model, request)
            except PolyrouteError as error:
                _log.warning("tokens.count_failed", provider=first.name, **describe_error(error))
                exact = None
            if exact is not None:
                return TokenCount(exact, True, first.name)
        return TokenCount(estimated_input_tokens(request), False, first.name if first else None)

    async def embed(
        self,
        model: str | None,
        input: str | Sequence[str],
        *,
        dimensions: int | None = None,
        encoding_format: EncodingFormat | None = None,
        request_id: str | None = None,
        budget: BudgetPlan | None = None,
        labels: RequestLabels | None = None,
    ) -> Embeddings:
        """One vector per text of ``input`` (a string is one), from ``model``, routed on
        the attempt engine like a chat request: aliases, priority, limits, retries,
        health, the same events. Only entries of that model take over from one another,
        then the models of its ``embedding_fallbacks``: vectors of two models do not mix.
        ``encoding_format="base64"`` asks upstreams that have it for OpenAI's base64 form
        (read it from ``.base64``; ``.vectors`` decodes it); floats by default.
        ``budget`` holds the request to budgets, and ``labels`` go into its record, as
        for :meth:`stream`.

        Raises at once :class:`InvalidRequestError` for bad input,
        :class:`ModelNotSupportedError` for a model no entry serves,
        :class:`CapabilityNotSupportedError` when none of its entries embeds and
        :class:`BudgetExceededError`; then :class:`AllProvidersFailed` when every
        candidate failed.
        """
        request_id = request_id or new_request_id()
        attempts: list[Attempt] = []
        if not self._observers:
            return await self._embed_request(
                model, input, dimensions, encoding_format, request_id, budget, attempts
            )
        call = _EmbeddingCall(request_id, labels or NO_LABELS, model, input, time.perf_counter())
        watches = watch_request(self._observers, lambda: _embedding_start(call, dimensions))
        try:
            embeddings = await self._embed_request(
                model, input, dimensions, encoding_format, request_id, budget, attempts, watches
            )
        except BaseException as error:
            self._embedding_ended(call, attempts, error, watches)
            raise
        self._embedding_ended(call, attempts, embeddings, watches)
        return embeddings

    def _embedding_ended(
        self,
        call: _EmbeddingCall,
        attempts: list[Attempt],
        outcome: Embeddings | BaseException,
        watches: Watches,
    ) -> None:
        notify(self._observers, lambda: self._embedding_record(call, attempts, outcome), watches)

    def _embedding_record(
        self, call: _EmbeddingCall, attempts: list[Attempt], outcome: Embeddings | BaseException
    ) -> RequestRecord:
        model = call.model if isinstance(call.model, str) and call.model else None
        model = model or self.default_model
        served = outcome if isinstance(outcome, Embeddings) else None
        error = outcome if isinstance(outcome, BaseException) else None
        status: RecordStatus = "complete"
        if error is not None:
            status = "cancelled" if is_cancellation(error) else "failed"
        texts = call.input

        def content() -> dict[str, Any]:
            return {"input": [texts] if isinstance(texts, str) else list(texts)}

        return build_record(
            request_id=call.request_id,
            labels=call.labels,
            endpoint="embeddings",
            model=model or "",
            resolved_model=served.model if served else model and self.resolve_model(model),
            provider=served.provider if served else None,
            status=status,
            attempts=attempts,
            # A failed embeddings call cost nothing: its attempts ended before any answer.
            cost=served.cost if served else FREE,
            started=call.started,
            error=error,
            content=content,
        )

    async def _embed_request(
        self,
        model: str | None,
        input: str | Sequence[str],
        dimensions: int | None,
        encoding_format: EncodingFormat | None,
        request_id: str,
        budget: BudgetPlan | None,
        attempts: list[Attempt],
        watches: Watches = NO_WATCHES,
    ) -> Embeddings:
        """:meth:`embed`'s routing, its tries recorded in ``attempts`` (and told to
        ``watches``)."""
        inputs = [input] if isinstance(input, str) else list(input)
        if not inputs or not all(isinstance(text, str) for text in inputs):
            raise InvalidRequestError("input must be a string or a non-empty list of strings")
        if encoding_format not in (None, "float", "base64"):
            raise InvalidRequestError(
                f"encoding_format must be 'float' or 'base64', not {encoding_format!r}"
            )
        model = self._requested(model)
        chain = self.policy.embedding_chain(model, self.settings.embedding_fallbacks)
        chars = sum(map(len, inputs))

        def estimate() -> int:
            return math.ceil(chars / CHARS_PER_TOKEN)

        engine = AttemptEngine(
            self._context_for(chain[0]),
            request_id=request_id,
            requested_model=model,
            chain=chain,
            needs=frozenset({"embeddings"}),
            estimate=estimate,
            attempts=attempts,
            watches=watches,
        )
        if budget is None:
            return await self._embed(engine, inputs, dimensions, encoding_format, estimate)
        ceiling = cost_ceiling(self.policy, chain, estimate(), 0)
        held = await self.budgets.reserve(budget, ceiling)
        try:
            embeddings = await self._embed(engine, inputs, dimensions, encoding_format, estimate)
        finally:
            self.budgets.settle(held, engine.context.cost_of(engine.attempts, estimate))
        return replace(embeddings, budget_remaining_usd=remaining_usd(held))

    async def _embed(
        self,
        engine: AttemptEngine,
        inputs: list[str],
        dimensions: int | None,
        encoding_format: EncodingFormat | None,
        estimate: Callable[[], int],
    ) -> Embeddings:
        engine.begin()
        while (candidate := await engine.next_candidate()) is not None:
            embedded = await engine.attempt(
                candidate,
                _embedding_call(candidate, inputs, dimensions, encoding_format or "float"),
            )
            if embedded is not None:
                usage = embedded.usage
                engine.succeed(
                    engine.attempts[-1],
                    candidate,
                    inputs=len(inputs),
                    prompt_tokens=usage.prompt_tokens if usage else None,
                )
                cost = engine.context.cost_of(engine.attempts, estimate)
                return Embeddings(
                    candidate.upstream_model,
                    candidate.name,
                    usage,
                    engine.attempts,
                    embedded,
                    cost,
                )
        engine.give_up()

    async def complete(
        self, model: str | None, messages: Messages, **options: Any
    ) -> AssistantMessage:
        """The whole answer, assembled (``.content``, ``.tool_calls``, ``.reasoning``),
        routed like :meth:`stream`, which takes the same arguments."""
        async with self.stream(model, messages, **options) as stream:
            async for _text in stream:
                pass
        return stream.message

    async def complete_text(self, model: str | None, messages: Messages, **options: Any) -> str:
        """Just the answer's text, routed like :meth:`stream`."""
        async with self.stream(model, messages, **options) as stream:
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
        self.policy.models_changed()
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, PolyrouteError):
                reason = " ".join(str(result).split())
                url = entry.provider.models_url
                named = url is None or url in reason  # status and connection errors name it
                self.discovery_errors[entry.name] = reason if named else f"{reason} (GET {url})"
                _log.warning(
                    "provider.discovery_failed", provider=entry.name, **describe_error(result)
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                self.discovery_errors.pop(entry.name, None)
                _log.info("provider.models_discovered", provider=entry.name, models=len(result))

    async def start(self) -> None:
        """Connect the shared state (``state: redis``), discover model lists and load the
        price catalogue; done by ``async with``. Without it, a shared state connects on
        the first request and decides alone until connected, and the first cost read
        loads the catalogue."""
        await self.state.start()
        await self.discover_models()
        entries = self.policy.entries
        if any(entry.price is None and entry.provider.prices_from for entry in entries):
            await asyncio.to_thread(load_catalogue)

    async def aclose(self) -> None:
        """Close every provider's connection pool and the shared state's connections
        (the state sends the budget settlements still queued first)."""
        await asyncio.gather(*(provider.aclose() for provider in self.providers))
        if self.cache is not None:
            await self.cache.aclose()
        await self.state.aclose()

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _embedding_call(
    candidate: Candidate, inputs: list[str], dimensions: int | None, encoding: EncodingFormat
) -> Callable[[Attempt, Lease], Awaitable[Embedded]]:
    """The attempt engine's call for one entry: its vectors, the place given back with
    the tokens the upstream counted."""

    async def call(attempt: Attempt, lease: Lease) -> Embedded:
        embedded = await candidate.entry.provider.embed(
            candidate.upstream_model, inputs, dimensions=dimensions, encoding_format=encoding
        )
        attempt.ttft_ms = attempt.elapsed_ms()  # a whole answer: its first byte is its last
        attempt.usage = embedded.usage
        lease.end(embedded.usage.total_tokens if embedded.usage else None)
        return embedded

    return call


class _EmbeddingCall(NamedTuple):
    """An embeddings call as it was asked, for its record."""

    request_id: str
    labels: RequestLabels
    model: str | None
    input: str | Sequence[str]
    started: float


def _embedding_start(call: _EmbeddingCall, dimensions: int | None) -> RequestStart:
    """An embeddings call as it starts, for the observers that watch it live."""
    model = call.model if isinstance(call.model, str) else ""
    options = {"dimensions": dimensions} if dimensions is not None else {}
    return RequestStart(call.request_id, call.labels, "embeddings", model, options, call.started)


class _Shared(NamedTuple):
    """What a router hands on to the router of a reloaded config."""

    state: RoutingState
    budgets: BudgetKeeper
    cache: ResponseCache | None
    observers: list[RequestObserver]


class _Built(NamedTuple):
    """An entry, and what its provider was made from: entries of equal recipes can
    share one provider instance (a reload keeps its connection pool)."""

    entry: Entry
    recipe: object


_ENTRY_ONLY_KEYS = {"priority", "weight", "limits", "price", "tool_calls"}
"""ProviderEntry keys the router's :class:`Entry` reads and its provider never sees."""


def _build_entries(
    specs: Sequence[ProviderSpec],
    registry: Registry,
    defaults: TimeoutsConfig,
    kept: Mapping[str, tuple[object, Entry]],
) -> list[_Built]:
    """Every entry of ``specs``, reusing the provider of a ``kept`` entry (name ->
    recipe and entry) whose recipe is the same. Raises :class:`ConfigError` for none,
    a duplicate name, or an entry that cannot be built."""
    built = [
        _build_entry(spec, index, registry, defaults, kept) for index, spec in enumerate(specs)
    ]
    if not built:
        raise ConfigError("a router needs at least one provider")
    names = [entry.name for entry, _ in built]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"duplicate provider names: {', '.join(duplicates)}")
    return built


def _build_entry(
    spec: ProviderSpec,
    index: int,
    registry: Registry,
    defaults: TimeoutsConfig,
    kept: Mapping[str, tuple[object, Entry]],
) -> _Built:
    if isinstance(spec, Provider):
        return _Built(Entry(spec), spec)
    entry = validate(ProviderEntry, spec, f"providers.{index}")
    _check_entry_aliases(entry, index)
    timeouts = {**defaults.model_dump(), **entry.timeouts.model_dump(exclude_unset=True)}
    recipe = (entry.model_dump(exclude=_ENTRY_ONLY_KEYS), timeouts)
    previous = kept.get(entry.name)
    if previous is not None and previous[0] == recipe:
        provider, missing_key = previous[1].provider, previous[1].missing_key
    else:
        provider, missing_key = _build_provider(entry, index, registry, Timeouts(**timeouts))
    built = Entry(
        provider,
        entry.priority,
        weight=entry.weight,
        limits=entry.limits,
        discover=entry.models == "discover" and missing_key is None,
        tool_calls=entry.tool_calls,
        missing_key=missing_key,
        price=Price(**entry.price.model_dump()) if entry.price is not None else None,
        prefill=entry.supports_prefill,
    )
    return _Built(built, recipe)


def _build_provider(
    entry: ProviderEntry, index: int, registry: Registry, timeouts: Timeouts
) -> tuple[Provider, str | None]:
    """The entry's provider, and the variable that should hold its key and does not."""
    try:
        provider_class = registry.get(entry.type)
    except ProviderNotFoundError as error:
        raise ConfigError(f"providers.{index}.type: {error}") from None
    kwargs: dict[str, Any] = {
        **entry.options,
        **entry.model_dump(exclude=_ROUTER_KEYS, exclude_none=True),
        "timeout": timeouts,
    }
    if isinstance(entry.models, list):
        kwargs["models"] = entry.models
    if kwargs.get("supports_prefill") == "auto":
        kwargs["supports_prefill"] = True  # may prefill; the router learns where not
    missing_key = None
    if entry.api_key_env:
        kwargs["api_key"] = os.environ.get(entry.api_key_env)
        if not kwargs["api_key"]:
            # One missing key skips this entry (with the reason), not the whole router.
            missing_key = entry.api_key_env
            del kwargs["api_key"]
    try:
        provider = provider_class(name=entry.name, **kwargs)
    except TypeError as error:
        raise ConfigError(
            f"providers.{index} ({entry.name!r}, type {entry.type!r}): {error}"
        ) from None
    return provider, missing_key


def _settings_of(config: RouterConfig) -> dict[str, Any]:
    """The router's keyword settings of a whole config (as given: defaults stay unset)."""
    return config.model_dump(
        exclude={"providers", "gateway", "store", "logs", "telemetry"}, exclude_unset=True
    )


def _policy(built: list[_Built], settings: RouterSettings) -> RoutingPolicy:
    """The routing policy of ``built``; raises :class:`ConfigError` for an alias that
    leads to no model an entry serves."""
    policy = RoutingPolicy(
        [entry for entry, _ in built], aliases=settings.aliases, fallbacks=settings.fallbacks
    )
    _check_aliases(policy)
    return policy


def _check_entry_aliases(entry: ProviderEntry, index: int) -> None:
    """An entry's own aliases must lead into its ``models``, when it lists them."""
    if not isinstance(entry.models, list) or not entry.models:
        return
    for alias, target in (entry.model_aliases or {}).items():
        if target not in entry.models and alias not in entry.models:
            raise ConfigError(
                f"providers.{index}.model_aliases.{alias} ({entry.name!r}) points to {target!r}, "
                f"which is not in the entry's models: {', '.join(entry.models)}"
            )


def _check_aliases(policy: RoutingPolicy) -> None:
    """Every router alias, a pattern's target included, must lead to a model some entry
    serves, as far as fixed model lists tell (an entry with no list, or ``models:
    discover``, may serve anything)."""
    providers = [entry.provider for entry in policy.entries]
    if any(not provider.models for provider in providers):
        return
    for alias in policy.aliases:
        chain = policy.alias_chain(alias)
        if not any(provider.serves(name) for name in chain for provider in providers):
            raise ConfigError(
                f"aliases.{alias} points to {policy.alias_target(alias)!r}, which no "
                f"provider serves; served: {', '.join(policy.known_models())}"
            )
