"""Router configuration: pydantic models, and loaders for YAML, TOML, JSON and dicts.

All loaders produce the same :class:`RouterConfig`; a validation error becomes a
:class:`ConfigError` naming the key path (``providers.1.priority``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from polyroute.core.config_file import read_config_of_kind
from polyroute.core.errors import ConfigError, describe_validation_error
from polyroute.core.schema import StrictModel as _Strict
from polyroute.store.config import LogsConfig, StoreConfig
from polyroute.telemetry.config import TelemetryConfig

Order = Literal["priority", "latency", "adaptive"]
Balance = Literal["weighted", "least_busy", "latency"]
ToolCallMode = Literal["stream", "atomic"]
PrefillSetting = bool | Literal["auto"]
"""How a cut answer may be continued on a chat-format entry: ``true`` by prefill (the
conversation ends with the partial assistant message), ``false`` by instruction,
``auto`` by prefill unless the model refused it once (then by instruction, remembered
in the routing state). docs/relay.md says how the mode is chosen."""
AFFINITY_BY = re.compile(r"conversation|user|prompt_cache_key|header:[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def is_alias_pattern(name: str) -> bool:
    """Whether a router alias key is an ``fnmatch`` pattern: it holds ``*``, ``?`` or ``[``."""
    return "*" in name or "?" in name or "[" in name


class TimeoutsConfig(_Strict):
    """Per-attempt time limits in seconds; ``null`` disables one."""

    connect: float | None = Field(10.0, gt=0, description="opening the connection")
    first_chunk: float | None = Field(30.0, gt=0, description="request sent -> first text")
    idle: float | None = Field(60.0, gt=0, description="longest silence between reads")
    total: float | None = Field(600.0, gt=0, description="the whole attempt")


class PartialTimeouts(_Strict):
    """A provider entry's overrides of the router-wide timeouts."""

    connect: float | None = Field(None, gt=0)
    first_chunk: float | None = Field(None, gt=0)
    idle: float | None = Field(None, gt=0)
    total: float | None = Field(None, gt=0)


class RetryBudget(_Strict):
    """Retries and fallback attempts allowed, across every process sharing the state:
    ``min_per_second`` x ``window_seconds`` plus ``ratio`` x the requests of the window."""

    ratio: float = Field(0.2, ge=0, description="extra attempts per request, on average")
    min_per_second: float = Field(5.0, ge=0, description="allowed whatever the traffic")
    window_seconds: int = Field(10, ge=1, le=60, description="how far back requests count")


class RetryConfig(_Strict):
    """Retries of retryable errors on the same provider, before moving on."""

    attempts: int = Field(2, ge=1, description="tries per provider; 1 disables retries")
    backoff_initial: float = Field(0.2, ge=0, description="seconds before the first retry")
    backoff_max: float = Field(5.0, ge=0, description="cap of the exponential backoff")
    max_retry_after: float = Field(
        30.0, ge=0, description="a longer Retry-After moves on to the next provider instead"
    )
    budget: RetryBudget | None = Field(
        None, description="off unless set: caps retries and fallbacks cluster-wide"
    )


class CooldownConfig(_Strict):
    """Skip a provider entry for ``seconds`` after ``failures`` consecutive failures."""

    failures: int = Field(3, ge=1)
    seconds: float = Field(30.0, ge=0)


class Limits(_Strict):
    """An entry's own limits, kept across every process sharing the state; an entry
    without headroom is skipped before it is called."""

    rpm: int | None = Field(None, ge=1, description="requests per minute (sliding window)")
    tpm: int | None = Field(None, ge=1, description="tokens per minute, estimated then corrected")
    concurrent: int | None = Field(None, ge=1, description="requests in flight at once")


class PriceConfig(_Strict):
    """An entry's price in USD per million tokens, over genai-prices' catalogue
    (docs/governance.md): cache reads and writes default to ``input``, reasoning to
    ``output``."""

    input: float = Field(ge=0, description="uncached input")
    output: float = Field(0.0, ge=0)
    cache_read: float | None = Field(None, ge=0)
    cache_write: float | None = Field(None, ge=0)
    reasoning: float | None = Field(None, ge=0, description="the output's reasoning share")


class StateConfig(_Strict):
    """Where routing state lives: this process (``memory``) or a Redis shared by every
    process and host that routes to the same upstreams (docs/shared-state.md)."""

    backend: Literal["memory", "redis"] = "memory"
    url: str = Field(
        "redis://127.0.0.1:6379/0", description="redis:// or rediss:// (TLS); pool from the URL"
    )
    prefix: str = Field("polyroute", min_length=1, description="key prefix and hash tag")
    timeout_ms: float = Field(
        50.0, gt=0, description="longest a request waits on Redis before deciding locally"
    )
    sync_ms: float = Field(
        100.0, gt=0, description="how often load figures and request counts are exchanged"
    )
    budget_grant_requests: int = Field(
        64,
        ge=0,
        description="room a process holds on a budget, in requests' worst cases, to admit "
        "them without a round trip (0: every request asks Redis)",
    )

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():  # the URL may hold a password
            yield key, "***" if key == "url" else value


CacheMode = Literal["use", "refresh", "off"]


class CacheConfig(_Strict):
    """The exact response cache (docs/cache.md): an answer stored under a hash of the
    request, replayed for the same request while it lasts. A request uses it only
    when asked (``x-polyroute-cache``, a gateway key's or a model's ``cache``)."""

    backend: Literal["memory", "redis"] = Field(
        "memory", description="this process (memory) or a Redis shared by every process"
    )
    url: str | None = Field(
        None, description="redis:// or rediss://; null: the routing state's state.url"
    )
    prefix: str = Field("polyroute-cache", min_length=1, description="Redis key prefix")
    ttl_s: float = Field(3600.0, gt=0, description="how long a stored answer is replayed")
    max_entry_bytes: int = Field(
        1024 * 1024, ge=1, description="a larger answer is not stored (counted)"
    )
    max_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="memory backend: least recently used go past it"
    )

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():  # the URL may hold a password
            yield key, "***" if key == "url" and value else value


_ENDPOINT_PATH = re.compile(
    r"(?P<version>/v1beta|/v1)?"
    r"(?P<endpoint>/chat/completions|/completions|/messages|/responses|/embeddings"
    r"|/models/[^/?]+:\w+)/*(?:\?.*)?$"
)
"""The path of an API endpoint at the end of a URL (what a base URL must not hold)."""


class ProviderEntry(_Strict):
    """One configured provider: a registry ``type`` plus overrides of its class attributes."""

    name: str = Field(min_length=1, description="unique entry name, used in events and errors")
    type: str = Field(min_length=1, description="registry type name, e.g. darkai")
    priority: int = Field(0, description="lower is tried first; ties keep list order")
    weight: float = Field(1.0, gt=0, description="share among equal priorities (balance)")
    limits: Limits | None = Field(None, description="rpm, tpm, concurrent; shared with state")
    price: PriceConfig | None = Field(
        None, description="USD per million tokens, over the catalogue"
    )
    working: bool | None = Field(None, description="overrides the class's working flag")
    api_endpoint: str | None = None
    base_url: str | None = None
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    proxy: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    default_model: str | None = None
    models: list[str] | Literal["discover"] | None = Field(
        None, description='"discover": ask the upstream (GET {base_url}/models) on router start'
    )
    model_aliases: dict[str, str] | None = None
    supports_tools: bool | None = Field(None, description="overrides the class's flag")
    supports_vision: bool | None = Field(None, description="overrides the class's flag")
    supports_json_schema: bool | None = Field(None, description="overrides the class's flag")
    supports_prefill: PrefillSetting | None = Field(
        None,
        description="true, false or auto: how a cut answer is continued here (docs/relay.md); "
        "null: auto for a type that can prefill (anthropic), else false",
    )
    supports_embeddings: bool | None = Field(None, description="overrides the class's flag")
    tool_calls: ToolCallMode | None = Field(
        None, description="overrides the route's tool_calls for this entry"
    )
    timeouts: PartialTimeouts = PartialTimeouts()
    connection_limit: int = Field(0, ge=0, description="0: no cap on open connections")
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments only this provider type takes"
    )

    @field_validator("base_url")
    @classmethod
    def _not_an_endpoint(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The commonest first mistake: the endpoint pasted from an upstream's docs,
        # which the provider then appends again (.../chat/completions/chat/completions).
        found = _ENDPOINT_PATH.search(value or "")
        if value is None or found is None:
            return value
        # OpenAI-style base URLs keep their version (/v1); Anthropic's and Gemini's
        # providers add theirs (/v1/messages, /v1beta/models/...).
        keeps_version = info.data.get("type") not in ("anthropic", "gemini")
        base = value[: found.start("endpoint") if keeps_version else found.start()]
        raise ValueError(
            f"{value!r} ends in the endpoint path {found['endpoint']}, which the provider "
            f"adds itself: write base_url: {base} (or give the whole URL as api_endpoint)"
        )

    def __repr_args__(self) -> Any:
        # proxy URLs and headers may hold credentials: keep them out of reprs.
        for key, value in super().__repr_args__():
            if key in ("proxy", "headers") and value:
                yield key, "***"
            else:
                yield key, value


class HedgeConfig(_Strict):
    """Start the next candidate in parallel when the first chunk is late."""

    after_ms: float | Literal["p95"] = Field(
        1500.0,
        description='milliseconds without a first chunk, or "p95" of the entry\'s recent ones',
    )
    max_parallel: int = Field(2, ge=2, description="upstream requests at once for one request")
    p95_fallback_ms: float = Field(
        1500.0, gt=0, description='"p95" before the entry has any observation'
    )

    @field_validator("after_ms")
    @classmethod
    def _positive(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and value <= 0:
            raise ValueError("after_ms must be positive")
        return value


class AffinityConfig(_Strict):
    """Send the requests of one conversation (or user, or key) to the entry that served
    it before, while it is usable and has headroom (docs/router.md#affinity)."""

    by: str = Field(
        "conversation",
        description="conversation (system prompt, tools, first user message), user, "
        "prompt_cache_key, or header:NAME",
    )
    ttl_s: float = Field(3600.0, gt=0, description="a pin not used for this long is forgotten")

    @field_validator("by")
    @classmethod
    def _known(cls, value: str) -> str:
        if not AFFINITY_BY.fullmatch(value):
            raise ValueError(
                f"{value!r}: by is conversation, user, prompt_cache_key or header:NAME"
            )
        return value.lower() if value.startswith("header:") else value


class RouteSettings(_Strict):
    """How one request is routed; set for all models, and per model under ``per_model``."""

    on_midstream_failure: Literal["continue", "restart", "raise"] = Field(
        "continue", description="what to do when an upstream fails after text was delivered"
    )
    continuation_fallback: Literal["restart", "raise"] = Field(
        "raise", description="when no remaining candidate can continue an answer"
    )
    max_relays: int = Field(2, ge=0, description="hand-overs after text was delivered, at most")
    hedge: HedgeConfig | None = Field(None, description="off unless set: it costs tokens")
    order: Order = "priority"
    balance: Balance | None = Field(
        None,
        description="among entries of equal priority: weighted (random by weight), "
        "least_busy (fewest in flight per weight) or latency (fastest first token)",
    )
    tool_calls: ToolCallMode = Field(
        "stream",
        description="stream: pass tool-call fragments on as they come; atomic: hold each "
        "call back until it is complete, so a failure inside one can still be relayed",
    )
    supports_prefill: PrefillSetting | None = Field(
        None,
        description="over the entries' own: false continues by instruction everywhere; "
        "true or auto where an entry allows prefill (docs/relay.md)",
    )
    affinity: AffinityConfig | None = Field(
        None, description="off unless set: keep a conversation on the entry that served it"
    )


class PerModelSettings(RouteSettings):
    """One model's settings under ``per_model``: route settings, and its cache mode."""

    cache: CacheMode | None = Field(
        None, description="use, refresh or off: the response cache for this model's requests"
    )


class RouterSettings(RouteSettings):
    """Everything but the providers: shared by config files and ``Router(...)`` in code."""

    per_model: dict[str, PerModelSettings] = Field(
        default_factory=dict,
        description="route settings for one model (a name, or an fnmatch pattern such as "
        "claude-opus-*), over the defaults",
    )

    def per_model_key(self, model: str) -> str | None:
        """The ``per_model`` key that applies to ``model``: its own name, else the
        longest pattern that matches it (on a tie, the first configured), else ``None``."""
        if model in self.per_model:
            return model
        matching = [key for key in self.per_model if is_alias_pattern(key)]
        matching = [key for key in matching if fnmatchcase(model, key)]
        return max(matching, key=len, default=None)

    def for_model(self, model: str) -> RouteSettings:
        """The route settings for ``model``: its ``per_model`` keys (see
        :meth:`per_model_key`) over the defaults."""
        key = self.per_model_key(model)
        override = self.per_model.get(key) if key is not None else None
        defaults = {name: getattr(self, name) for name in RouteSettings.model_fields}
        if override is None:
            return RouteSettings(**defaults)
        given = override.model_fields_set & RouteSettings.model_fields.keys()
        return RouteSettings(**{**defaults, **{k: getattr(override, k) for k in given}})

    default_model: str | None = Field(None, description="used when a request names no model")
    aliases: dict[str, str] = Field(
        default_factory=dict,
        description="name or fnmatch pattern (claude-*) -> model; exact names win, then the "
        "longest pattern; docs/router.md",
    )
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    embedding_fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="embedding models whose vectors may stand in for a model's, in order "
        "(chat fallbacks are never used for embeddings: vectors of two models do not mix)",
    )
    retry: RetryConfig = RetryConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    cooldown: CooldownConfig = CooldownConfig()
    state: StateConfig = StateConfig()
    cache: CacheConfig | None = Field(
        None, description="off unless set: the exact response cache (docs/cache.md)"
    )

    @model_validator(mode="after")
    def _aliases_terminate(self) -> RouterSettings:
        # A pattern applies at most once per resolution (RoutingPolicy.resolve_alias),
        # so only exact aliases can loop; a target is a name, never a pattern.
        for alias, target in self.aliases.items():
            if is_alias_pattern(target):
                raise ValueError(
                    f"aliases.{alias}: target {target!r} is a pattern; a target must be a "
                    "model name or another alias's name"
                )
        exact = {name: to for name, to in self.aliases.items() if not is_alias_pattern(name)}
        for start in exact:
            seen = [start]
            name = start
            while name in exact:
                name = exact[name]
                if name in seen:
                    raise ValueError(f"alias cycle: {' -> '.join([*seen, name])}")
                seen.append(name)
        return self


class BudgetConfig(_Strict):
    """At most ``usd`` of spend per ``period`` (UTC), held exactly across the gateways
    sharing the routing state (docs/governance.md)."""

    usd: float = Field(ge=0, description="USD per period")
    period: Literal["day", "week", "month", "total"]
    default_max_tokens: int = Field(
        4096, ge=1, description="the answer assumed (worst case) when a request sets none"
    )


class GatewayTeam(_Strict):
    """Keys that share a budget and limits."""

    name: str = Field(min_length=1, description="shown in the access log and metrics")
    rpm: int | None = Field(None, ge=1, description="requests per minute of all its keys")
    tpm: int | None = Field(None, ge=1, description="tokens per minute of all its keys")
    budget: BudgetConfig | None = None


class GatewayKey(_Strict):
    """One client key of the gateway; the key itself is read from ``key_env``."""

    name: str = Field(min_length=1, description="shown in the access log and metrics")
    key_env: str = Field(min_length=1, description="environment variable holding the key")
    models: list[str] | None = Field(None, description="models it may ask for; null: any")
    rpm: int | None = Field(None, ge=1, description="requests per minute; null: no limit")
    tpm: int | None = Field(None, ge=1, description="tokens per minute; null: no limit")
    cache: CacheMode | None = Field(
        None, description="the response cache mode of its requests, unless they say"
    )
    team: str | None = Field(None, description="the name of its team (gateway.teams)")
    budget: BudgetConfig | None = None


class GatewayConfig(_Strict):
    """``polyroute serve``'s settings (docs/gateway.md); the router itself ignores them."""

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="a larger body gets 413")
    drain_seconds: float = Field(
        30.0, ge=0, description="time for requests in flight to finish after SIGTERM"
    )
    keys: list[GatewayKey] = Field(
        default_factory=list, description="with keys, every /v1 request needs one (Bearer)"
    )
    log_content: bool = Field(
        False, description="put message content in the access log and the request log"
    )
    responses_store: bool = Field(
        True, description="keep /v1/responses answers (store: true) in the routing state"
    )
    responses_ttl_s: float = Field(
        3600.0, gt=0, description="how long a stored response can be read or continued"
    )
    teams: list[GatewayTeam] = Field(default_factory=list)
    budget_hold_s: float = Field(
        900.0, gt=0, description="how long a budget reservation counts if never settled"
    )
    admin_key_env: str | None = Field(
        None,
        min_length=1,
        description="environment variable holding the admin API's key; null: no /admin",
    )
    default_model_when_missing: bool = Field(
        False,
        description="a request without model gets default_model; false: a 400, as OpenAI's",
    )
    protect_metrics: bool = Field(
        False, description="/metrics and /readyz need a gateway key or the admin key"
    )
    # Limits and timeouts of the gateway's own (docs/gateway.md#limits-and-overload).
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection's request line and headers arrive within this"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body arrives within this, else 408"
    )
    keepalive_s: float = Field(
        75.0, gt=0, description="an idle keep-alive connection is closed after this"
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="open client connections; more are refused at once with 503. "
        "null: from the process's file limit, leaving room for upstreams",
    )
    max_in_flight: int | None = Field(
        None,
        ge=0,
        description="requests served at once; more get 503 with Retry-After. "
        "null: 256 (measured, docs/performance.md), fewer under a low file limit; 0: no cap",
    )
    max_loop_lag_ms: float | None = Field(
        None, gt=0, description="also refuse new requests while the event loop lags this much"
    )
    backlog: int = Field(
        2048, ge=1, description="the listen backlog (capped by the system's somaxconn)"
    )

    @model_validator(mode="after")
    def _teams_known(self) -> GatewayConfig:
        names = [team.name for team in self.teams]
        if len(set(names)) < len(names):
            raise ValueError(f"teams: a name given twice in {names}")
        for key in self.keys:
            if key.team is not None and key.team not in names:
                raise ValueError(f"key {key.name!r}: team {key.team!r} is not in teams {names}")
        return self


class RouterConfig(RouterSettings):
    """The whole router configuration (see docs/router.md for every key)."""

    providers: list[ProviderEntry] = Field(min_length=1)
    gateway: GatewayConfig = GatewayConfig()
    store: StoreConfig | None = Field(
        None, description="where runtime keys, teams and the spend ledger live (docs/store.md)"
    )
    logs: LogsConfig = Field(
        default_factory=LogsConfig,
        description="the request log, in the store (docs/observability.md)",
    )
    telemetry: TelemetryConfig | None = Field(
        None,
        description="OpenTelemetry traces and metrics over OTLP/HTTP, from the gateway "
        "(docs/observability.md#opentelemetry; the otel extra)",
    )


_M = TypeVar("_M", bound=BaseModel)


def validate(model: type[_M], data: Any, origin: str = "config") -> _M:
    """``model.model_validate(data)``, with errors as one :class:`ConfigError` naming key
    paths (and the closest known key for an unknown one)."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = describe_validation_error(error, model=model)
        raise ConfigError(f"invalid {origin}: {problems}") from None


def load_config(source: RouterConfig | Mapping[str, Any] | str | Path) -> RouterConfig:
    """Build a :class:`RouterConfig` from a model, a dict, or a ``.yaml``/``.toml``/``.json`` file.

    Raises :class:`ConfigError` naming the file and the key path of every problem.
    """
    if isinstance(source, str | Path):
        data = read_config_of_kind(Path(source), "router")
        return validate(RouterConfig, data, str(source))
    return validate(RouterConfig, source)
