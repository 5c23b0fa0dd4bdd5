"""The admin API under ``/admin``: keys and teams at runtime, the spend ledger
(docs/governance.md) and the request log (docs/observability.md).

Only the admin key opens it (``gateway.admin_key_env``, sent as ``Authorization:
Bearer``, compared in constant time; never a cookie): no key or a wrong one gets 401,
a gateway key 403. Bodies are checked by pydantic models (a 400 names the field), and
answers use OpenAI's error shape. A key's secret is made here, shown once in the answer
that made it, and never kept: the store has its SHA-256 and a short prefix to show.

A change is applied to this process's keys at once and announced through the routing
state, so that every other gateway has it within a second. ``POST /admin/reload``
re-reads this process's config file (polyroute.server.reload).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from polyroute.core.errors import ConfigError, PolyrouteError, describe_validation_error
from polyroute.core.periods import utc_now
from polyroute.core.redaction import register_secret
from polyroute.server.dialects.errors import WireError, openai_error, own_failure
from polyroute.server.keys import KeyRing
from polyroute.server.reload import ReloadSummary
from polyroute.server.responses import error_response, json_response, request_id_of
from polyroute.server.store_keys import StoreKeys
from polyroute.store import (
    ConflictError,
    InvalidValueError,
    KeyRecord,
    NotFoundError,
    RequestQuery,
    Store,
    StoreError,
    StoreUnavailableError,
    TeamRecord,
    hash_secret,
)
from polyroute.store.request_log import DEFAULT_PAGE

SECRET_PREFIX = "pr-"
DISPLAY_CHARS = 10
"""What the store keeps of a secret to show: ``pr-`` and 7 of its 43 random characters."""
_Handler = Callable[[web.Request], Awaitable[web.Response]]


class _Body(BaseModel):
    # Strict: a count given as "5" or a flag as 1 is a mistake worth a 400.
    model_config = ConfigDict(extra="forbid", strict=True)


_M = TypeVar("_M", bound=_Body)


class Budget(_Body):
    """At most ``usd`` of spend per ``period`` (UTC)."""

    usd: float = Field(ge=0)
    period: Literal["day", "week", "month", "total"]


class NewTeam(_Body):
    name: str = Field(min_length=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    budget: Budget | None = None
    metadata: dict[str, Any] | None = None


class TeamChanges(_Body):
    name: str = Field("", min_length=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    budget: Budget | None = None
    metadata: dict[str, Any] | None = None


class NewKey(_Body):
    name: str = Field(min_length=1)
    team: str | None = Field(None, min_length=1, description="a team's name")
    models: list[str] | None = None
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    budget: Budget | None = None
    expires_at: AwareDatetime | None = None
    log_content: bool | None = None
    metadata: dict[str, Any] | None = None


class KeyChanges(NewKey):
    name: str = Field("", min_length=1)


class Rotation(_Body):
    grace_s: float = Field(0.0, ge=0, description="how long the old secret keeps working")


class AdminApi:
    """The ``/admin`` routes of a gateway whose admin key is ``secret``. Without a
    ``store`` (no ``store:`` configured) keys, teams and spend answer 404 saying so."""

    def __init__(
        self,
        secret: str,
        *,
        store: Store | None,
        keys: StoreKeys | None,
        user_keys: Callable[[], KeyRing],
        announce: Callable[[], Awaitable[None]],
        reload: Callable[[], Awaitable[ReloadSummary]] | None = None,
    ) -> None:
        register_secret(secret)
        self._secret = secret.encode()
        self._store = store
        self._keys = keys
        self._user_keys = user_keys
        self._announce = announce
        self._reload = reload

    def add_routes(self, app: web.Application) -> None:
        routes: list[tuple[str, str, _Handler]] = [
            ("POST", "/admin/keys", self.create_key),
            ("GET", "/admin/keys", self.list_keys),
            ("GET", "/admin/keys/{id}", self.get_key),
            ("PATCH", "/admin/keys/{id}", self.update_key),
            ("DELETE", "/admin/keys/{id}", self.revoke_key),
            ("POST", "/admin/keys/{id}/rotate", self.rotate_key),
            ("POST", "/admin/teams", self.create_team),
            ("GET", "/admin/teams", self.list_teams),
            ("GET", "/admin/teams/{id}", self.get_team),
            ("PATCH", "/admin/teams/{id}", self.update_team),
            ("DELETE", "/admin/teams/{id}", self.delete_team),
            ("GET", "/admin/spend", self.spend),
            ("GET", "/admin/requests", self.list_requests),
            ("GET", "/admin/requests/{id:.+}", self.get_request),
            ("POST", "/admin/reload", self.reload),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, self._guarded(handler))

    # Keys -----------------------------------------------------------------------

    async def create_key(self, request: web.Request) -> web.Response:
        body = await _read(request, NewKey)
        store = self._need_store()
        team = await self._team_named(body.team) if body.team is not None else None
        secret, digest, prefix = _new_secret()
        record = await store.create_key(
            name=body.name,
            secret_hash=digest,
            display_prefix=prefix,
            team_id=team.id if team else None,
            models=body.models,
            rpm=body.rpm,
            tpm=body.tpm,
            **_budget_columns(body.budget),
            expires_at=body.expires_at,
            log_content=body.log_content,
            metadata=body.metadata,
        )
        await self._changed(record, team)
        view = {**key_view(record, team.name if team else None), "key": secret}
        return json_response(view, status=201)

    async def list_keys(self, request: web.Request) -> web.Response:
        store = self._need_store()
        revoked = request.query.get("include_revoked", "false").lower() in ("true", "1")
        keys = await store.list_keys(include_revoked=revoked)
        names = {team.id: team.name for team in await store.list_teams()}
        data = [key_view(key, names.get(key.team_id or "")) for key in keys]
        return json_response({"object": "list", "data": data})

    async def get_key(self, request: web.Request) -> web.Response:
        record = await self._need_store().get_key(request.match_info["id"])
        return json_response(key_view(record, await self._team_name(record.team_id)))

    async def update_key(self, request: web.Request) -> web.Response:
        body = await _read(request, KeyChanges)
        store = self._need_store()
        given = body.model_fields_set
        changes: dict[str, Any] = {
            field: getattr(body, field)
            for field in ("name", "models", "rpm", "tpm", "expires_at", "log_content", "metadata")
            if field in given
        }
        team = None
        if "team" in given:
            team = await self._team_named(body.team) if body.team is not None else None
            changes["team_id"] = team.id if team else None
        if "budget" in given:
            changes.update(_budget_columns(body.budget))
        record = await store.update_key(request.match_info["id"], **changes)
        if team is None and record.team_id is not None:
            team = await store.get_team(record.team_id)
        await self._changed(record, team)
        return json_response(key_view(record, team.name if team else None))

    async def revoke_key(self, request: web.Request) -> web.Response:
        record = await self._need_store().revoke_key(request.match_info["id"])
        await self._changed(record, None)
        return json_response(key_view(record, await self._team_name(record.team_id)))

    async def rotate_key(self, request: web.Request) -> web.Response:
        body = await _read(request, Rotation, empty_ok=True)
        secret, digest, prefix = _new_secret()
        record = await self._need_store().rotate_key(
            request.match_info["id"], digest, prefix, body.grace_s
        )
        await self._changed(record, None)
        view = key_view(record, await self._team_name(record.team_id))
        return json_response({**view, "key": secret})

    # Teams ----------------------------------------------------------------------

    async def create_team(self, request: web.Request) -> web.Response:
        body = await _read(request, NewTeam)
        team = await self._need_store().create_team(
            name=body.name,
            rpm=body.rpm,
            tpm=body.tpm,
            **_budget_columns(body.budget),
            metadata=body.metadata,
        )
        return json_response(team_view(team), status=201)

    async def list_teams(self, request: web.Request) -> web.Response:
        teams = await self._need_store().list_teams()
        return json_response({"object": "list", "data": [team_view(team) for team in teams]})

    async def get_team(self, request: web.Request) -> web.Response:
        return json_response(team_view(await self._need_store().get_team(request.match_info["id"])))

    async def update_team(self, request: web.Request) -> web.Response:
        body = await _read(request, TeamChanges)
        given = body.model_fields_set
        changes: dict[str, Any] = {
            field: getattr(body, field)
            for field in ("name", "rpm", "tpm", "metadata")
            if field in given
        }
        if "budget" in given:
            changes.update(_budget_columns(body.budget))
        team = await self._need_store().update_team(request.match_info["id"], **changes)
        if self._keys is not None:
            self._keys.apply_team(team)
        await self._announce()
        return json_response(team_view(team))

    async def delete_team(self, request: web.Request) -> web.Response:
        team_id = request.match_info["id"]
        await self._need_store().delete_team(team_id)
        await self._announce()
        return json_response({"id": team_id, "object": "team", "deleted": True})

    # Spend and reload -----------------------------------------------------------

    async def spend(self, request: web.Request) -> web.Response:
        """``?group_by=key|team|model|provider|day&from=&to=`` (RFC 3339 times, or dates:
        midnight UTC); ``to`` is excluded."""
        query = request.query
        group_by = query.get("group_by", "key")
        start, end = _moment("from", query.get("from")), _moment("to", query.get("to"))
        groups = await self._need_store().spend(group_by, start, end)  # type: ignore[arg-type]
        data = [
            {
                "group": group.group,
                "requests": group.requests,
                "input_tokens": group.input_tokens,
                "output_tokens": group.output_tokens,
                "cost_usd": round(group.cost_usd, 10),
            }
            for group in groups
        ]
        return json_response({"object": "list", "data": data})

    # The request log -----------------------------------------------------------

    async def list_requests(self, request: web.Request) -> web.Response:
        """``?key=&model=&provider=&status=&since=&limit=&cursor=``: logged requests,
        newest first, ``{"data": [...], "next_cursor": ...}`` (``since``: an RFC 3339
        time or a date; ``cursor``: a page's ``next_cursor``)."""
        query = request.query

        def given(name: str) -> str | None:
            return query.get(name) or None

        page = await self._need_store().list_requests(
            RequestQuery(
                key=given("key"),
                model=given("model"),
                provider=given("provider"),
                status=given("status"),
                since=_moment("since", given("since")),
                limit=_page_size(given("limit")),
                cursor=given("cursor"),
            )
        )
        return json_response(page.as_json())

    async def get_request(self, request: web.Request) -> web.Response:
        """One logged request, with its attempts (the newest, if its id was reused)."""
        return json_response(await self._need_store().get_request(request.match_info["id"]))

    async def reload(self, request: web.Request) -> web.Response:
        """Re-read the gateway's config file (as SIGHUP does): what changed, or a 400
        with the error that keeps the running config."""
        if self._reload is None:
            raise _RefusedError(
                501, "this gateway has no config file to re-read", "not_implemented"
            )
        try:
            summary = await self._reload()
        except ConfigError as error:
            raise _RefusedError(400, str(error), "invalid_config") from None
        return json_response(summary.as_json())

    # Plumbing -------------------------------------------------------------------

    def _guarded(self, handler: _Handler) -> _Handler:
        async def guarded(request: web.Request) -> web.Response:
            request_id = request_id_of(request)
            try:
                self._check_admin(request)
                return await handler(request)
            except _RefusedError as refused:
                return error_response(refused.wire, request_id)
            except StoreError as error:
                return error_response(_store_refusal(error), request_id)

        return guarded

    def refusal(self, request: web.Request) -> web.Response | None:
        """The 401 or 403 of a request without the admin key, as the admin API's own
        routes answer it; ``None`` when it carries the key (the console's routes)."""
        try:
            self._check_admin(request)
        except _RefusedError as refused:
            return error_response(refused.wire, request_id_of(request))
        return None

    def _check_admin(self, request: web.Request) -> None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        presented = given.strip() if scheme.lower() == "bearer" else ""
        if not presented:
            message = "the admin API needs the admin key (Authorization: Bearer ...)"
            raise _RefusedError(401, message, "invalid_api_key")
        if hmac.compare_digest(presented.encode(), self._secret):
            return
        if self._user_keys().find(request.headers) is not None:
            message = "a gateway key cannot use the admin API: send the admin key"
            raise _RefusedError(403, message, "admin_key_required")
        raise _RefusedError(401, "wrong admin key", "invalid_api_key")

    def _need_store(self) -> Store:
        if self._store is None:
            message = (
                "keys, teams, spend and the request log need a store: configure store: "
                "(docs/store.md)"
            )
            raise _RefusedError(404, message, "no_store")
        return self._store

    async def _team_named(self, name: str) -> TeamRecord:
        team = await self._need_store().team_by_name(name)
        if team is None:
            raise _RefusedError(400, f"team: no team is named {name!r}", "team_not_found")
        return team

    async def _team_name(self, team_id: str | None) -> str | None:
        if team_id is None:
            return None
        try:
            return (await self._need_store().get_team(team_id)).name
        except NotFoundError:
            return None

    async def _changed(self, record: KeyRecord, team: TeamRecord | None) -> None:
        """Apply a key's change here at once, and tell the other gateways."""
        if self._keys is not None:
            self._keys.apply([record], {team.id: team} if team is not None else None)
        await self._announce()


class _RefusedError(PolyrouteError):
    """An admin request refused with ``status`` (raised inside a handler, and answered
    by its guard: never leaves this module)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.wire: WireError = openai_error(own_failure(status, message, code))


async def _read(request: web.Request, model: type[_M], *, empty_ok: bool = False) -> _M:
    raw = await request.read()
    if empty_ok and not raw.strip():
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        if any(item["type"] == "json_invalid" for item in error.errors()):
            raise _RefusedError(400, "the body is not JSON", "invalid_json") from None
        raise _RefusedError(
            400, describe_validation_error(error, model=model), "invalid_value"
        ) from None


def _new_secret() -> tuple[str, str, str]:
    """A new secret (its ``pr-`` shape is masked in every log line and error:
    polyroute.core.redaction) and what the store keeps of it: its SHA-256 and its
    prefix to show."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    return secret, hash_secret(secret), secret[:DISPLAY_CHARS]


def _store_refusal(error: StoreError) -> WireError:
    if isinstance(error, NotFoundError):
        return openai_error(own_failure(404, str(error), f"{error.kind}_not_found"))
    if isinstance(error, ConflictError):
        return openai_error(own_failure(409, str(error), "conflict"))
    if isinstance(error, InvalidValueError):
        return openai_error(own_failure(400, str(error), "invalid_value"))
    if isinstance(error, StoreUnavailableError):
        return openai_error(own_failure(503, str(error), "store_unavailable"))
    return openai_error(own_failure(500, str(error), "store_error"))


def _moment(name: str, text: str | None) -> datetime | None:
    """A query's time: RFC 3339 with its offset, or a date (midnight UTC)."""
    if not text:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        message = f"{name}: {text!r} is not an RFC 3339 time with its offset (or a date)"
        raise _RefusedError(400, message, "invalid_value")
    return moment


def _page_size(text: str | None) -> int:
    if text is None:
        return DEFAULT_PAGE
    try:
        return int(text)
    except ValueError:
        message = f"limit: {text!r} is not a whole number"
        raise _RefusedError(400, message, "invalid_value") from None


def iso(moment: datetime | None) -> str | None:
    """A time as RFC 3339, in UTC (``Z``)."""
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _budget_columns(budget: Budget | None) -> dict[str, Any]:
    """A budget as the store's columns (``None``: no budget)."""
    if budget is None:
        return {"budget_usd": None, "budget_period": None}
    return {"budget_usd": budget.usd, "budget_period": budget.period}


def _budget(usd: float | None, period: str | None) -> dict[str, Any] | None:
    return None if usd is None or period is None else {"usd": usd, "period": period}


def key_view(record: KeyRecord, team_name: str | None) -> dict[str, Any]:
    """A key as the admin API shows it: never its secret, never its hash."""
    now = utc_now()
    status = "active"
    if record.revoked_at is not None:
        status = "revoked"
    elif record.expires_at is not None and now >= record.expires_at:
        status = "expired"
    grace = record.previous_valid_until
    return {
        "id": record.id,
        "object": "key",
        "name": record.name,
        "status": status,
        "display_prefix": record.display_prefix,
        "team_id": record.team_id,
        "team": team_name,
        "models": list(record.models) if record.models is not None else None,
        "rpm": record.rpm,
        "tpm": record.tpm,
        "budget": _budget(record.budget_usd, record.budget_period),
        "expires_at": iso(record.expires_at),
        "log_content": record.log_content,
        "metadata": dict(record.metadata),
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "revoked_at": iso(record.revoked_at),
        "previous_valid_until": iso(grace) if grace is not None and now < grace else None,
    }


def team_view(team: TeamRecord) -> dict[str, Any]:
    return {
        "id": team.id,
        "object": "team",
        "name": team.name,
        "rpm": team.rpm,
        "tpm": team.tpm,
        "budget": _budget(team.budget_usd, team.budget_period),
        "metadata": dict(team.metadata),
        "created_at": iso(team.created_at),
        "updated_at": iso(team.updated_at),
    }
