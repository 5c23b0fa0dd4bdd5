"""The store in PostgreSQL, through asyncpg (the ``postgres`` extra).

A small pool (``max_size`` connections, 4 by default): the store serves admin calls,
key reloads and the ledger's batches, never one query per request. Times are
``timestamptz``, JSON is ``jsonb`` (decoded by a codec set on each connection), money
is ``double precision`` (migrations.py says why).

The DSN's password is registered as a secret when the store is made, so that no
repr, log line or error shows it. When the server cannot be reached, a call raises
:class:`StoreUnavailableError`; the pool connects again on the next call (and a
store that could not start creates its pool then).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Unpack
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from polyroute.core.errors import ConfigError
from polyroute.core.periods import utc_now
from polyroute.core.redaction import redact, register_secret
from polyroute.store import contract as c
from polyroute.store import request_log as log
from polyroute.store.contract import (
    ConflictError,
    KeyChanges,
    KeyRecord,
    NotFoundError,
    SpendGroup,
    SpendRow,
    StoreError,
    StoreUnavailableError,
    TeamRecord,
)
from polyroute.store.migrations import POSTGRES_LOCK_ID, SCHEMA_VERSION_TABLE, pending

try:
    import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
except ImportError:  # pragma: no cover - depends on the install
    asyncpg = None

_UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, TimeoutError)
if asyncpg is not None:
    _UNAVAILABLE = (
        OSError,
        TimeoutError,  # connect timeout, or command_timeout on a server that hangs
        asyncpg.PostgresConnectionError,  # class 08, and a connection lost mid-query
        asyncpg.OperatorInterventionError,  # class 57: shutting down, starting up
        asyncpg.InsufficientResourcesError,  # class 53: disk full, too many connections
        asyncpg.InvalidAuthorizationSpecificationError,  # class 28: the login refused
        asyncpg.InvalidCatalogNameError,  # the database does not exist (yet)
        asyncpg.InterfaceError,  # "connection is closed"
    )

_GROUP_COLUMNS = {
    "key": "key_id",
    "team": "team_id",
    "model": "model",
    "provider": "provider",
    "day": "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
# One statement for a whole batch: arrays unnested into rows, the duplicates skipped,
# the new ones counted.
_APPEND_SPEND = """
WITH added AS (
    INSERT INTO spend (request_id, time, key_id, team_id, model, provider, input_tokens,
        cached_input_tokens, output_tokens, reasoning_tokens, cost_usd, cost_status)
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
        $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::float8[],
        $12::text[])
    ON CONFLICT (time, request_id) DO NOTHING
    RETURNING 1)
SELECT count(*) FROM added"""
# The request log's batch likewise; the JSON columns travel as text, cast on the way in.
_LOG_TYPES = ("text", "timestamptz", "text", "text", "text", "text", "text", "text", "text",
              "text", "float8", "float8", "bigint", "bigint", "bigint", "bigint", "float8",
              "text", "text", "text", "text", "text", "text")  # fmt: skip
_ADD_REQUESTS = f"""
WITH added AS (
    INSERT INTO request_log ({", ".join(log.COLUMNS)})
    SELECT {", ".join(log.COLUMNS[:-2])}, attempts::jsonb, content::jsonb
    FROM unnest({", ".join(f"${n}::{kind}[]" for n, kind in enumerate(_LOG_TYPES, start=1))})
        AS batch ({", ".join(log.COLUMNS)})
    ON CONFLICT (time, id) DO NOTHING
    RETURNING 1)
SELECT count(*) FROM added"""


class PostgresStore:
    """:class:`~polyroute.store.contract.Store` in the PostgreSQL database of ``dsn``
    (a ``postgresql://`` URL); its schema is created or upgraded on start."""

    backend = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int = 4,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 10.0,
    ) -> None:
        if asyncpg is None:
            raise ConfigError(
                "store.backend postgres needs asyncpg: pip install 'polyroute[postgres]'"
            )
        parts = urlsplit(dsn)
        # the password may sit before the host, or in the query (?password=...)
        for password in (parts.password, *parse_qs(parts.query).get("password", ())):
            register_secret(password)
            register_secret(unquote(password or ""))
        self.migrations_applied: tuple[int, ...] = ()
        """The schema versions this store's start applied (empty: none)."""
        self._dsn = dsn
        self._max_size = max_size
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._pool: Any = None
        self._opening = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresStore(dsn={redact(self._dsn)!r})"

    async def start(self) -> None:
        await self._ready_pool()

    async def aclose(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self._command_timeout_s)
            except TimeoutError:
                pool.terminate()  # a connection stuck on a dead server: drop it

    # Teams

    async def create_team(self, **fields: Unpack[c.NewTeam]) -> TeamRecord:
        values = c.new_team(fields)
        now = utc_now()
        row = {"id": c.new_id("team"), **values, "created_at": now, "updated_at": now}
        try:
            async with self._transaction() as db:
                return _team(await _insert(db, "teams", row))
        except asyncpg.UniqueViolationError as exc:
            raise c.unique_violation("team", exc.constraint_name or "", values) from None

    async def get_team(self, team_id: str) -> TeamRecord:
        row = await self._fetchrow("SELECT * FROM teams WHERE id = $1", team_id)
        if row is None:
            raise NotFoundError("team", team_id)
        return _team(row)

    async def team_by_name(self, name: str) -> TeamRecord | None:
        row = await self._fetchrow("SELECT * FROM teams WHERE name = $1", name)
        return None if row is None else _team(row)

    async def list_teams(self) -> list[TeamRecord]:
        return [_team(row) for row in await self._fetch("SELECT * FROM teams ORDER BY name")]

    async def update_team(self, team_id: str, **changes: Unpack[c.TeamUpdate]) -> TeamRecord:
        values = c.team_changes(changes)
        try:
            async with self._transaction() as db:
                row = await _update(db, "teams", team_id, {**values, "updated_at": utc_now()})
                if row is None:
                    raise NotFoundError("team", team_id)
                # Its keys' limits changed with it: readers of keys_changed_since re-read them.
                if await db.fetchval("SELECT 1 FROM api_keys WHERE team_id = $1 LIMIT 1", team_id):
                    await db.execute(
                        "UPDATE api_keys SET version = $1 WHERE team_id = $2",
                        await _next_key_version(db),
                        team_id,
                    )
        except asyncpg.UniqueViolationError as exc:
            raise c.unique_violation("team", exc.constraint_name or "", values) from None
        return _team(row)

    async def delete_team(self, team_id: str) -> None:
        async with self._transaction() as db:
            if not await db.fetchval("SELECT 1 FROM teams WHERE id = $1 FOR UPDATE", team_id):
                raise NotFoundError("team", team_id)
            active = await db.fetchval(
                "SELECT count(*) FROM api_keys WHERE team_id = $1 AND revoked_at IS NULL",
                team_id,
            )
            if active:
                raise ConflictError("team", c.active_keys_message(team_id, active))
            if await db.fetchval("SELECT 1 FROM api_keys WHERE team_id = $1 LIMIT 1", team_id):
                await db.execute(
                    "UPDATE api_keys SET team_id = NULL, version = $1, updated_at = $2"
                    " WHERE team_id = $3",
                    await _next_key_version(db),
                    utc_now(),
                    team_id,
                )
            await db.execute("DELETE FROM teams WHERE id = $1", team_id)

    # Keys

    async def create_key(self, **fields: Unpack[c.NewKey]) -> KeyRecord:
        values = c.new_key(fields)
        now = utc_now()
        try:
            async with self._transaction() as db:
                await _require_team(db, values["team_id"])
                row = {
                    "id": c.new_id("key"),
                    **values,
                    "created_at": now,
                    "updated_at": now,
                    "version": await _next_key_version(db),
                }
                return _key(await _insert(db, "api_keys", row))
        except asyncpg.UniqueViolationError as exc:
            raise c.unique_violation("key", exc.constraint_name or "", values) from None

    async def get_key(self, key_id: str) -> KeyRecord:
        row = await self._fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
        if row is None:
            raise NotFoundError("key", key_id)
        return _key(row)

    async def key_by_hash(self, secret_hash: str) -> KeyRecord | None:
        row = await self._fetchrow(
            "SELECT * FROM api_keys WHERE secret_hash = $1"
            " OR (previous_hash = $1 AND previous_valid_until > $2)"
            " ORDER BY secret_hash = $1 DESC LIMIT 1",
            secret_hash,
            utc_now(),
        )
        return None if row is None else _key(row)

    async def list_keys(
        self, *, team_id: str | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        rows = await self._fetch(
            "SELECT * FROM api_keys WHERE ($1::text IS NULL OR team_id = $1)"
            " AND ($2 OR revoked_at IS NULL) ORDER BY name, created_at",
            team_id,
            include_revoked,
        )
        return [_key(row) for row in rows]

    async def update_key(self, key_id: str, **changes: Unpack[c.KeyUpdate]) -> KeyRecord:
        values = c.key_changes(changes)
        try:
            async with self._transaction() as db:
                await _require_team(db, values.get("team_id"))
                changed = {
                    **values,
                    "updated_at": utc_now(),
                    "version": await _next_key_version(db),
                }
                row = await _update(db, "api_keys", key_id, changed)
                if row is None:
                    raise NotFoundError("key", key_id)  # rolls the version back too
        except asyncpg.UniqueViolationError as exc:
            raise c.unique_violation("key", exc.constraint_name or "", values) from None
        return _key(row)

    async def revoke_key(self, key_id: str) -> KeyRecord:
        async with self._transaction() as db:
            row = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1 FOR UPDATE", key_id)
            if row is None:
                raise NotFoundError("key", key_id)
            if row["revoked_at"] is not None:
                return _key(row)
            now = utc_now()
            version = await _next_key_version(db)
            changes = {"revoked_at": now, "updated_at": now, "version": version}
            return _key(await _update(db, "api_keys", key_id, changes))

    async def rotate_key(
        self, key_id: str, new_hash: str, new_prefix: str, grace_s: float
    ) -> KeyRecord:
        new_hash, new_prefix, grace = c.rotation(new_hash, new_prefix, grace_s)
        try:
            async with self._transaction() as db:
                row = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1 FOR UPDATE", key_id)
                if row is None:
                    raise NotFoundError("key", key_id)
                if row["revoked_at"] is not None:
                    raise ConflictError("key", f"key {key_id!r} is revoked: it cannot be rotated")
                changes = c.rotated(row["secret_hash"], new_hash, new_prefix, grace)
                changes["version"] = await _next_key_version(db)
                return _key(await _update(db, "api_keys", key_id, changes))
        except asyncpg.UniqueViolationError as exc:
            raise c.unique_violation("key", exc.constraint_name or "", {}) from None

    async def keys_version(self) -> int:
        row = await self._fetchrow("SELECT version FROM key_version")
        return int(row["version"])

    async def keys_changed_since(self, version: int) -> KeyChanges:
        async with self._transaction(isolation="repeatable_read", readonly=True) as db:
            now = int(await db.fetchval("SELECT version FROM key_version"))
            rows = await db.fetch(
                "SELECT * FROM api_keys WHERE version > $1 AND version <= $2 ORDER BY version",
                version,
                now,
            )
        return KeyChanges(now, tuple(_key(row) for row in rows))

    # The spend ledger

    async def append_spend(self, rows: Sequence[SpendRow]) -> int:
        if not rows:
            return 0
        columns = list(zip(*rows, strict=True))  # a row is its columns (SpendRow)
        async with self._transaction() as db:
            return int(await db.fetchval(_APPEND_SPEND, *columns))

    async def spend(
        self,
        group_by: c.SpendGroupBy,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[SpendGroup]:
        column = _GROUP_COLUMNS[c.spend_group(group_by)]
        rows = await self._fetch(
            f"SELECT {column} AS grp, count(*), coalesce(sum(input_tokens), 0)::bigint,"
            " coalesce(sum(output_tokens), 0)::bigint, coalesce(sum(cost_usd), 0)::float8"
            " FROM spend WHERE ($1::timestamptz IS NULL OR time >= $1)"
            " AND ($2::timestamptz IS NULL OR time < $2)"
            " GROUP BY grp ORDER BY grp NULLS FIRST",
            None if start is None else c.aware_time("start", start),
            None if end is None else c.aware_time("end", end),
        )
        return [SpendGroup(row[0], row[1], row[2], row[3], row[4]) for row in rows]

    async def spent(self, scope: c.SpendScope, id: str, since: datetime) -> float:
        column = _GROUP_COLUMNS[c.spend_scope(scope)]
        row = await self._fetchrow(
            f"SELECT coalesce(sum(cost_usd), 0)::float8 FROM spend"
            f" WHERE {column} = $1 AND time >= $2",
            id,
            c.aware_time("since", since),
        )
        return float(row[0])

    # The request log

    async def add_requests(self, records: Sequence[Mapping[str, Any]]) -> int:
        if not records:
            return 0
        rows = [_log_values(record) for record in records]
        async with self._transaction() as db:
            return int(await db.fetchval(_ADD_REQUESTS, *zip(*rows, strict=True)))

    async def list_requests(self, query: log.RequestQuery) -> log.RequestPage:
        sql, params = query.select()
        rows = await self._fetch(log.numbered(sql), *params)
        return log.page_of([log.record_of(row) for row in rows], query.limit)

    async def get_request(self, request_id: str) -> dict[str, Any]:
        row = await self._fetchrow(log.numbered(log.GET), request_id)
        if row is None:
            raise NotFoundError("request", request_id)
        return log.record_of(row)

    async def prune_requests(self, before: datetime, limit: int = log.PRUNE_BATCH) -> int:
        moment = c.aware_time("before", before)
        async with self._connection() as db:
            status = await db.execute(log.numbered(log.PRUNE), moment, limit)
        return int(status.split()[-1])  # "DELETE 42"

    # Connections

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._connection() as db:
            return list(await db.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        async with self._connection() as db:
            return await db.fetchrow(sql, *args)

    @asynccontextmanager
    async def _transaction(self, **options: Any) -> AsyncIterator[Any]:
        async with self._connection() as db, db.transaction(**options):
            yield db

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; the server's failures become the store's errors."""
        pool = await self._ready_pool()
        try:
            async with pool.acquire() as db:
                yield db
        except asyncpg.UniqueViolationError:
            raise  # the caller knows which record it was: it makes the ConflictError
        except _UNAVAILABLE as exc:
            raise StoreUnavailableError("postgres", _describe(exc)) from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"postgres store: {_describe(exc)}") from exc

    async def _ready_pool(self) -> Any:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        if self._pool is not None:
            return self._pool
        async with self._opening:  # concurrent first calls make one pool
            if self._pool is None:
                self._pool = await self._open()
        return self._pool

    async def _open(self) -> Any:
        # min_size=0: with a floor, asyncpg reconnects in the background while the server
        # is down and logs a traceback each time; the pool connects on demand instead.
        pool = asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._max_size,
            timeout=self._connect_timeout_s,
            command_timeout=self._command_timeout_s,
            init=_init_connection,
        )
        try:
            await pool
            async with pool.acquire() as db:
                self.migrations_applied = await _migrate(db)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, _UNAVAILABLE):
                # from None: the driver's own error may quote the DSN it was given
                raise StoreUnavailableError("postgres", _describe(exc)) from None
            raise
        return pool


async def _init_connection(db: Any) -> None:
    await db.set_type_codec(
        "jsonb",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def _migrate(db: Any) -> tuple[int, ...]:
    async with db.transaction():
        # Processes starting together queue here: each migration is applied once.
        await db.execute("SELECT pg_advisory_xact_lock($1)", POSTGRES_LOCK_ID)
        await db.execute(SCHEMA_VERSION_TABLE["postgres"])
        todo = pending(await db.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        for migration in todo:
            for statement in migration.postgres:
                await db.execute(statement)
            await db.execute(
                "INSERT INTO schema_version (version, description) VALUES ($1, $2)",
                migration.version,
                migration.description,
            )
    return tuple(migration.version for migration in todo)


async def _next_key_version(db: Any) -> int:
    # The row lock taken here is held to the commit: see migrations.py, key_version.
    return int(await db.fetchval("UPDATE key_version SET version = version + 1 RETURNING version"))


async def _require_team(db: Any, team_id: str | None) -> None:
    if team_id is not None and not await db.fetchval(
        "SELECT 1 FROM teams WHERE id = $1 FOR SHARE", team_id
    ):
        raise NotFoundError("team", team_id)


async def _insert(db: Any, table: str, values: Mapping[str, Any]) -> Any:
    columns = ", ".join(values)
    marks = ", ".join(f"${n}" for n in range(1, len(values) + 1))
    sql = f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING *"
    return await db.fetchrow(sql, *(_encode(field, value) for field, value in values.items()))


async def _update(db: Any, table: str, id: str, values: Mapping[str, Any]) -> Any:
    sets = ", ".join(f"{field} = ${n}" for n, field in enumerate(values, start=1))
    sql = f"UPDATE {table} SET {sets} WHERE id = ${len(values) + 1} RETURNING *"
    return await db.fetchrow(sql, *(_encode(f, v) for f, v in values.items()), id)


def _encode(field: str, value: Any) -> Any:
    return list(value) if field == "models" and value is not None else value


def _log_values(record: Mapping[str, Any]) -> list[Any]:
    values = log.row_of(record)
    for index in (-2, -1):  # attempts, content: JSON text (cast to jsonb by the statement)
        if values[index] is not None:
            values[index] = orjson.dumps(values[index]).decode()
    return values


def _team(row: Any) -> TeamRecord:
    return TeamRecord(
        id=row["id"],
        name=row["name"],
        rpm=row["rpm"],
        tpm=row["tpm"],
        budget_usd=row["budget_usd"],
        budget_period=row["budget_period"],
        metadata=row["metadata"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _key(row: Any) -> KeyRecord:
    models = row["models"]
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        team_id=row["team_id"],
        secret_hash=row["secret_hash"],
        display_prefix=row["display_prefix"],
        models=None if models is None else tuple(models),
        rpm=row["rpm"],
        tpm=row["tpm"],
        budget_usd=row["budget_usd"],
        budget_period=row["budget_period"],
        expires_at=row["expires_at"],
        log_content=row["log_content"],
        metadata=row["metadata"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        revoked_at=row["revoked_at"],
        previous_hash=row["previous_hash"],
        previous_valid_until=row["previous_valid_until"],
    )


def _describe(error: BaseException) -> str:
    return redact(f"{type(error).__name__}: {error}")
