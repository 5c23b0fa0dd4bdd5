"""What the gateway asks of its governance store, whichever database keeps it.

Teams, API keys, the spend ledger and the request log live here because they must
survive restarts.
The store never holds a key's secret: only its SHA-256 (:func:`hash_secret`) and a
short prefix to show. Every method is a coroutine; a backend whose database cannot
be reached raises :class:`StoreUnavailableError` and connects again on the next call.

The values given to ``create_*`` and ``update_*`` are checked here, once for both
backends, so that both refuse the same things with the same :class:`InvalidValueError`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    NamedTuple,
    Protocol,
    TypeAlias,
    TypedDict,
    Unpack,
    get_args,
)

import orjson

from polyroute.core.errors import PolyrouteError
from polyroute.core.periods import Period, period_window, utc_now

if TYPE_CHECKING:
    from polyroute.store.request_log import RequestPage, RequestQuery

BudgetPeriod: TypeAlias = Period
CostStatus: TypeAlias = Literal["exact", "estimated", "unpriced"]
SpendGroupBy: TypeAlias = Literal["key", "team", "model", "provider", "day"]
SpendScope: TypeAlias = Literal["key", "team"]

BUDGET_PERIODS: frozenset[str] = frozenset(get_args(BudgetPeriod))
COST_STATUSES: frozenset[str] = frozenset(get_args(CostStatus))
SPEND_GROUPS: frozenset[str] = frozenset(get_args(SpendGroupBy))
SPEND_SCOPES: frozenset[str] = frozenset(get_args(SpendScope))


class StoreError(PolyrouteError):
    """The governance store refused or failed an operation; base of its errors."""


class NotFoundError(StoreError, LookupError):
    """No team, key or logged request has that id: ``kind`` is ``team``, ``key`` or
    ``request``, ``id`` the id asked."""

    def __init__(self, kind: str, id: str) -> None:
        self.kind = kind
        self.id = id
        super().__init__(f"no {kind} with id {id!r}")


class ConflictError(StoreError):
    """The change contradicts what is stored (a duplicate name or secret hash, a team
    that still has active keys, a revoked key rotated). ``kind``: ``team`` or ``key``."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


class InvalidValueError(StoreError, ValueError):
    """A value given to the store is of the wrong type or out of range; ``field`` names
    it. An admin API can answer 400 with the message as it is."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class StoreUnavailableError(StoreError):
    """The database cannot be reached (down, locked, out of disk, refused the login).

    Retryable: the store connects again on its next call. ``backend`` is ``sqlite`` or
    ``postgres``.
    """

    retryable = True

    def __init__(self, backend: str, message: str) -> None:
        self.backend = backend
        super().__init__(f"{backend} store unavailable: {message}")


@dataclass(frozen=True, slots=True)
class TeamRecord:
    """A team: limits and a budget its keys share. ``metadata`` is free-form JSON."""

    id: str
    name: str
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_period: BudgetPeriod | None
    metadata: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key, without its secret: ``secret_hash`` is the SHA-256 hex of the secret,
    ``display_prefix`` what may be shown of it. ``models`` ``None`` allows every model;
    ``log_content`` ``None`` follows the gateway's own setting. After a rotation the
    old secret still works until ``previous_valid_until``."""

    id: str
    name: str
    team_id: str | None
    secret_hash: str
    display_prefix: str
    models: tuple[str, ...] | None
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_period: BudgetPeriod | None
    expires_at: datetime | None
    log_content: bool | None
    metadata: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None
    previous_hash: str | None
    previous_valid_until: datetime | None

    def is_active(self, now: datetime) -> bool:
        """Whether the key may be used at ``now``: not revoked, not expired."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """Keys changed after a version (revoked ones included), and the version they
    bring the reader to: pass it to the next ``keys_changed_since``."""

    version: int
    keys: tuple[KeyRecord, ...]


class _SpendColumns(NamedTuple):
    request_id: str
    time: datetime
    key_id: str | None
    team_id: str | None
    model: str
    provider: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: float | None
    cost_status: CostStatus


class SpendRow(_SpendColumns):
    """One request's usage and cost, as the ledger records it (once per ``time`` and
    ``request_id``: a batch written twice counts once).

    ``cost_usd`` is ``None`` when the model has no price (``cost_status="unpriced"``).
    Raises :class:`InvalidValueError` for a naive ``time`` or an unknown status: the
    row is checked when made, so that a bad one never reaches a batch.

    A tuple of the ``spend`` table's columns, in their order: every served request
    makes one, and a frozen dataclass took 5 us to make where this takes 1 (and the
    stores bind it as it is).
    """

    __slots__ = ()

    def __new__(
        cls,
        request_id: str,
        time: datetime,
        key_id: str | None,
        team_id: str | None,
        model: str,
        provider: str,
        input_tokens: int,
        cached_input_tokens: int,
        output_tokens: int,
        reasoning_tokens: int,
        cost_usd: float | None,
        cost_status: CostStatus,
    ) -> SpendRow:
        if not isinstance(time, datetime) or time.tzinfo is None:
            aware_time("time", time)  # raises
        if cost_status not in COST_STATUSES:
            raise InvalidValueError("cost_status", f"must be one of {sorted(COST_STATUSES)}")
        return _SpendColumns.__new__(
            cls, request_id, time, key_id, team_id, model, provider, input_tokens,
            cached_input_tokens, output_tokens, reasoning_tokens, cost_usd, cost_status,
        )  # fmt: skip

    def columns(self) -> tuple[Any, ...]:
        """Its values in the ``spend`` table's column order (the fields' order)."""
        return tuple(self)


@dataclass(frozen=True, slots=True)
class SpendGroup:
    """Spend summed over one group (a key, team, model, provider or UTC day); ``group``
    is ``None`` for requests made without a key or team. Unpriced requests count in
    ``requests`` and tokens but add nothing to ``cost_usd``."""

    group: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


class _Limits(TypedDict, total=False):
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_period: BudgetPeriod | None
    metadata: Mapping[str, Any] | None


class NewTeam(_Limits):
    """What ``create_team`` takes: a unique ``name``; the rest defaults to ``None``."""

    name: str


class TeamUpdate(_Limits, total=False):
    """What ``update_team`` takes: any of a team's fields."""

    name: str


class _KeyOptions(_Limits, total=False):
    team_id: str | None
    models: Sequence[str] | None
    expires_at: datetime | None
    log_content: bool | None


class NewKey(_KeyOptions):
    """What ``create_key`` takes: a ``name`` unique among active keys, the secret's
    ``secret_hash`` (:func:`hash_secret`, never the secret) and ``display_prefix``."""

    name: str
    secret_hash: str
    display_prefix: str


class KeyUpdate(_KeyOptions, total=False):
    """What ``update_key`` takes: any of a key's fields but its secret (``rotate_key``)."""

    name: str


class Store(Protocol):
    """Teams, keys and the spend ledger, kept in a database (docs/store.md).

    Every method may raise :class:`StoreUnavailableError`; unknown ids raise
    :class:`NotFoundError`, duplicate names :class:`ConflictError`, bad values
    :class:`InvalidValueError`.
    """

    backend: str

    async def start(self) -> None:
        """Connect and apply pending schema migrations (idempotent)."""
        ...

    async def aclose(self) -> None:
        """Close the connections; later calls raise :class:`StoreError`."""
        ...

    async def create_team(self, **fields: Unpack[NewTeam]) -> TeamRecord:
        """A new team; its name must be unique."""
        ...

    async def get_team(self, team_id: str) -> TeamRecord:
        """The team of that id."""
        ...

    async def team_by_name(self, name: str) -> TeamRecord | None:
        """The team of that name, or ``None``."""
        ...

    async def list_teams(self) -> list[TeamRecord]:
        """Every team, by name."""
        ...

    async def update_team(self, team_id: str, **changes: Unpack[TeamUpdate]) -> TeamRecord:
        """Change the given fields; the team as it is now."""
        ...

    async def delete_team(self, team_id: str) -> None:
        """Delete a team. :class:`ConflictError` while active keys belong to it; its
        revoked keys are detached (their ``team_id`` becomes ``None``)."""
        ...

    async def create_key(self, **fields: Unpack[NewKey]) -> KeyRecord:
        """A new key (its ``team_id``, when given, must exist)."""
        ...

    async def get_key(self, key_id: str) -> KeyRecord:
        """The key of that id (revoked or not)."""
        ...

    async def key_by_hash(self, secret_hash: str) -> KeyRecord | None:
        """The key whose current secret, or previous one still in its rotation grace,
        has this hash; ``None`` if none. Revoked and expired keys are returned too:
        check :meth:`KeyRecord.is_active` (so that a caller can say why it refuses)."""
        ...

    async def list_keys(
        self, *, team_id: str | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        """Keys (of one team, when given), by name."""
        ...

    async def update_key(self, key_id: str, **changes: Unpack[KeyUpdate]) -> KeyRecord:
        """Change the given fields; the key as it is now."""
        ...

    async def revoke_key(self, key_id: str) -> KeyRecord:
        """Revoke a key (revoking twice keeps the first time)."""
        ...

    async def rotate_key(
        self, key_id: str, new_hash: str, new_prefix: str, grace_s: float
    ) -> KeyRecord:
        """Give a key a new secret; the current one keeps working for ``grace_s``
        seconds. :class:`ConflictError` for a revoked key."""
        ...

    async def keys_version(self) -> int:
        """A number that grows with every change to any key (0 when none was made)."""
        ...

    async def keys_changed_since(self, version: int) -> KeyChanges:
        """Keys changed after ``version`` (0: every key), and the version now."""
        ...

    async def append_spend(self, rows: Sequence[SpendRow]) -> int:
        """Record rows in one transaction; a row already recorded (the same ``time`` and
        ``request_id``) is skipped (a batch sent again counts once). How many rows were
        new."""
        ...

    async def spend(
        self,
        group_by: SpendGroupBy,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[SpendGroup]:
        """Spend from ``start`` (included) to ``end`` (excluded), summed by group,
        ordered by group (``None`` first)."""
        ...

    async def spent(self, scope: SpendScope, id: str, since: datetime) -> float:
        """USD spent by a key or team since ``since``: what a budget check compares.
        An id with no spend (or unknown) has spent 0.0."""
        ...

    async def add_requests(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Record requests in the request log, in one transaction; each is the record's
        JSON shape (docs/observability.md). A record already there (same ``id`` and
        ``time``) is skipped: how many were new. :class:`InvalidValueError` for a
        mapping that is not a record."""
        ...

    async def list_requests(self, query: RequestQuery) -> RequestPage:
        """Logged requests matching ``query``, newest first, a page at a time."""
        ...

    async def get_request(self, request_id: str) -> dict[str, Any]:
        """The logged request of that id (the newest, when a client reused the id);
        :class:`NotFoundError` when none is logged."""
        ...

    async def prune_requests(self, before: datetime, limit: int = 5000) -> int:
        """Delete at most ``limit`` logged requests older than ``before``, oldest first;
        how many. Call again while it returns ``limit``."""
        ...


# What follows is shared by the backends: ids, clocks and the checks of given values.


def hash_secret(secret: str) -> str:
    """The SHA-256 hex of a key's secret: the only form of it a store keeps."""
    return hashlib.sha256(secret.encode()).hexdigest()


def budget_window_start(period: BudgetPeriod, now: datetime) -> datetime:
    """Where the budget window holding ``now`` began (UTC): midnight, Monday midnight,
    the first of the month, or the beginning of time for ``total``."""
    return period_window(period, aware_time("now", now)).starts_at


def new_id(kind: str) -> str:
    """``team_…`` or ``key_…``: random, so that processes never coordinate ids."""
    return f"{kind}_{secrets.token_hex(12)}"


def aware_time(field: str, value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused (its zone would be a guess)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidValueError(field, "must be a timezone-aware datetime")
    return value.astimezone(UTC)


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def secret_hash(field: str, value: Any) -> str:
    """A lowercase SHA-256 hex; refusing anything else also keeps a secret passed by
    mistake out of the database."""
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise InvalidValueError(field, "must be the SHA-256 hex of the secret (hash_secret)")
    return value


def display_prefix(field: str, value: Any) -> str:
    """What may be shown of a secret: a short non-empty string (16 characters at most,
    so that most of the secret's entropy stays unshown)."""
    if not isinstance(value, str) or not value or len(value) > 16:
        raise InvalidValueError(field, "must be a non-empty string of at most 16 characters")
    return value


def unique_violation(kind: str, detail: str, values: Mapping[str, Any]) -> ConflictError:
    """The :class:`ConflictError` for a unique constraint the database named in
    ``detail`` (SQLite's message, PostgreSQL's constraint name)."""
    if "hash" in detail:
        return ConflictError(kind, "another key has this secret hash: make a new secret")
    if kind == "key":
        return ConflictError(kind, f"an active key named {values.get('name')!r} exists already")
    return ConflictError(kind, f"a team named {values.get('name')!r} exists already")


def active_keys_message(team_id: str, count: int) -> str:
    return (
        f"team {team_id!r} has {count} active key(s): revoke them or move them to another "
        "team before deleting it"
    )


def _name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidValueError(field, "must be a non-empty string")
    return value


def _optional_text(field: str, value: Any) -> str | None:
    return None if value is None else _name(field, value)


def _limit(field: str, value: Any) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InvalidValueError(field, "must be a whole number of at least 1, or None")
    return value


def _budget(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise InvalidValueError(field, "must be a number of USD, at least 0, or None")
    return float(value)


def _period(field: str, value: Any) -> str | None:
    if value is not None and value not in BUDGET_PERIODS:
        raise InvalidValueError(field, f"must be one of {sorted(BUDGET_PERIODS)}, or None")
    return value  # type: ignore[no-any-return]


def _metadata(field: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidValueError(field, "must be a mapping")
    try:  # the round trip is what the database will give back
        return orjson.loads(orjson.dumps(dict(value)))  # type: ignore[no-any-return]
    except TypeError as exc:
        raise InvalidValueError(field, f"must hold JSON values only ({exc})") from None


def _models(field: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):  # a str is one, and wrong
        raise InvalidValueError(field, "must be a list of model names, or None for all")
    if not all(isinstance(model, str) and model for model in value):
        raise InvalidValueError(field, "must hold non-empty model names")
    return tuple(value)


def _optional_time(field: str, value: Any) -> datetime | None:
    return None if value is None else aware_time(field, value)


def _optional_bool(field: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InvalidValueError(field, "must be true, false or None")
    return value


Check = Callable[[str, Any], Any]
_TEAM_CHECKS: dict[str, Check] = {
    "name": _name,
    "rpm": _limit,
    "tpm": _limit,
    "budget_usd": _budget,
    "budget_period": _period,
    "metadata": _metadata,
}
_KEY_CHECKS: dict[str, Check] = {
    **_TEAM_CHECKS,
    "team_id": _optional_text,
    "models": _models,
    "expires_at": _optional_time,
    "log_content": _optional_bool,
}
_NEW_KEY_CHECKS: dict[str, Check] = {
    **_KEY_CHECKS,
    "secret_hash": secret_hash,
    "display_prefix": display_prefix,
}
_UNSET_TEAM = dict.fromkeys(_TEAM_CHECKS)
_UNSET_KEY = dict.fromkeys(_KEY_CHECKS)


def new_team(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A new team's columns, checked and normalised (absent ones ``None``)."""
    return _checked({**_UNSET_TEAM, **fields}, _TEAM_CHECKS, "team", required=("name",))


def team_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` to a team checked and normalised; unknown names refused."""
    return _checked(changes, _TEAM_CHECKS, "team")


def new_key(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A new key's columns, checked and normalised (absent ones ``None``)."""
    required = ("name", "secret_hash", "display_prefix")
    return _checked({**_UNSET_KEY, **fields}, _NEW_KEY_CHECKS, "key", required=required)


def key_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` to a key checked and normalised; unknown names refused."""
    return _checked(changes, _KEY_CHECKS, "key")


def rotation(new_hash: str, new_prefix: str, grace_s: float) -> tuple[str, str, timedelta]:
    """``rotate_key``'s arguments checked; the grace as a duration."""
    if not isinstance(grace_s, int | float) or isinstance(grace_s, bool) or grace_s < 0:
        raise InvalidValueError("grace_s", "must be a number of seconds, at least 0")
    new_hash = secret_hash("new_hash", new_hash)
    return new_hash, display_prefix("new_prefix", new_prefix), timedelta(seconds=grace_s)


def rotated(current_hash: str, new_hash: str, new_prefix: str, grace: timedelta) -> dict[str, Any]:
    """A rotation's column changes: the current hash stays valid for ``grace``."""
    now = utc_now()
    return {
        "previous_hash": current_hash,
        "previous_valid_until": now + grace,
        "secret_hash": new_hash,
        "display_prefix": new_prefix,
        "updated_at": now,
    }


def spend_group(group_by: str) -> SpendGroupBy:
    if group_by not in SPEND_GROUPS:
        raise InvalidValueError("group_by", f"must be one of {sorted(SPEND_GROUPS)}")
    return group_by  # type: ignore[return-value]


def spend_scope(scope: str) -> SpendScope:
    if scope not in SPEND_SCOPES:
        raise InvalidValueError("scope", f"must be one of {sorted(SPEND_SCOPES)}")
    return scope  # type: ignore[return-value]


def _checked(
    values: Mapping[str, Any],
    checks: Mapping[str, Check],
    kind: str,
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    unknown = sorted(set(values) - set(checks))
    if unknown:
        raise InvalidValueError(unknown[0], f"not a field of a {kind} (valid: {', '.join(checks)})")
    for field in required:
        if values.get(field) is None:
            raise InvalidValueError(field, "is required")
    return {field: checks[field](field, value) for field, value in values.items()}
