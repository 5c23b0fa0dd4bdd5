"""The store in one SQLite file, through the standard library's ``sqlite3``.

One connection, used only from one worker thread: every call is handed to that
thread, so the event loop never waits on the disk, and calls run one at a time in
the order they were made (SQLite allows one writer anyway). WAL mode lets other
processes read the file while this one writes; ``synchronous=NORMAL`` is WAL's
usual companion: a crash of the process loses nothing, a power cut may lose the
last transactions, never the file's consistency.

When the file cannot be opened or written (missing directory, disk full, locked by
another process past ``busy_timeout_s``), the call raises
:class:`StoreUnavailableError` and the connection is dropped; the next call opens it
again (and migrates, if it is a new file).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, Unpack

import orjson

from polyroute.core.periods import utc_now
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
from polyroute.store.migrations import SCHEMA_VERSION_TABLE, pending

T = TypeVar("T")

# Errors of the file or of another process, not of the statement: worth a retry later.
_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_PERM,
    }
)
_DAY = "substr(time, 1, 10)"  # times are ISO text: the first 10 characters are the UTC day
_GROUP_COLUMNS = {"key": "key_id", "team": "team_id", "model": "model", "provider": "provider"}
_SPEND_COLUMNS = (
    "request_id, time, key_id, team_id, model, provider, input_tokens, cached_input_tokens, "
    "output_tokens, reasoning_tokens, cost_usd, cost_status"
)


class SqliteStore:
    """:class:`~polyroute.store.contract.Store` in the SQLite file at ``path``
    (created, with its schema, on first start; its directory must exist)."""

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.migrations_applied: tuple[int, ...] = ()
        """The schema versions the last opening of the file applied (empty: none)."""
        self._busy_timeout_s = busy_timeout_s
        self._db: sqlite3.Connection | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polyroute-sqlite")
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteStore(path={str(self.path)!r})"

    async def start(self) -> None:
        await self._call(lambda db: None)  # opening the file migrates it

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._worker, self._forget)
        finally:
            self._worker.shutdown(wait=True)  # the queue is empty: this only joins the thread

    # Teams

    async def create_team(self, **fields: Unpack[c.NewTeam]) -> TeamRecord:
        return await self._call(_create_team, c.new_team(fields))

    async def get_team(self, team_id: str) -> TeamRecord:
        row = await self._call(_one, "SELECT * FROM teams WHERE id = ?", (team_id,))
        if row is None:
            raise NotFoundError("team", team_id)
        return _team(row)

    async def team_by_name(self, name: str) -> TeamRecord | None:
        row = await self._call(_one, "SELECT * FROM teams WHERE name = ?", (name,))
        return None if row is None else _team(row)

    async def list_teams(self) -> list[TeamRecord]:
        rows = await self._call(_all, "SELECT * FROM teams ORDER BY name", ())
        return [_team(row) for row in rows]

    async def update_team(self, team_id: str, **changes: Unpack[c.TeamUpdate]) -> TeamRecord:
        return await self._call(_update_team, team_id, c.team_changes(changes))

    async def delete_team(self, team_id: str) -> None:
        await self._call(_delete_team, team_id)

    # Keys

    async def create_key(self, **fields: Unpack[c.NewKey]) -> KeyRecord:
        return await self._call(_create_key, c.new_key(fields))

    async def get_key(self, key_id: str) -> KeyRecord:
        row = await self._call(_one, "SELECT * FROM api_keys WHERE id = ?", (key_id,))
        if row is None:
            raise NotFoundError("key", key_id)
        return _key(row)

    async def key_by_hash(self, secret_hash: str) -> KeyRecord | None:
        row = await self._call(
            _one,
            "SELECT * FROM api_keys WHERE secret_hash = ?1"
            " OR (previous_hash = ?1 AND previous_valid_until > ?2)"
            " ORDER BY secret_hash = ?1 DESC LIMIT 1",
            (secret_hash, _text(utc_now())),
        )
        return None if row is None else _key(row)

    async def list_keys(
        self, *, team_id: str | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        where = ["1 = 1"]
        if team_id is not None:
            where.append("team_id = :team")
        if not include_revoked:
            where.append("revoked_at IS NULL")
        sql = f"SELECT * FROM api_keys WHERE {' AND '.join(where)} ORDER BY name, created_at"
        rows = await self._call(_all, sql, {"team": team_id})
        return [_key(row) for row in rows]

    async def update_key(self, key_id: str, **changes: Unpack[c.KeyUpdate]) -> KeyRecord:
        return await self._call(_update_key, key_id, c.key_changes(changes))

    async def revoke_key(self, key_id: str) -> KeyRecord:
        return await self._call(_revoke_key, key_id)

    async def rotate_key(
        self, key_id: str, new_hash: str, new_prefix: str, grace_s: float
    ) -> KeyRecord:
        rotation = c.rotation(new_hash, new_prefix, grace_s)
        return await self._call(_rotate_key, key_id, *rotation)

    async def keys_version(self) -> int:
        row = await self._call(_one, "SELECT version FROM key_version", ())
        assert row is not None  # the migration inserts the one row
        return int(row[0])

    async def keys_changed_since(self, version: int) -> KeyChanges:
        return await self._call(_keys_changed_since, version)

    # The spend ledger

    async def append_spend(self, rows: Sequence[SpendRow]) -> int:
        if not rows:
            return 0
        return await self._call(_append_spend, [_spend_values(row) for row in rows])

    async def spend(
        self,
        group_by: c.SpendGroupBy,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[SpendGroup]:
        column = _DAY if c.spend_group(group_by) == "day" else _GROUP_COLUMNS[group_by]
        where, params = ["1 = 1"], []
        if start is not None:
            where.append("time >= ?")
            params.append(_text(c.aware_time("start", start)))
        if end is not None:
            where.append("time < ?")
            params.append(_text(c.aware_time("end", end)))
        sql = (
            f"SELECT {column} AS grp, count(*), coalesce(sum(input_tokens), 0),"
            " coalesce(sum(output_tokens), 0), coalesce(sum(cost_usd), 0.0)"
            f" FROM spend WHERE {' AND '.join(where)} GROUP BY grp ORDER BY grp NULLS FIRST"
        )
        rows = await self._call(_all, sql, params)
        return [SpendGroup(row[0], row[1], row[2], row[3], float(row[4])) for row in rows]

    async def spent(self, scope: c.SpendScope, id: str, since: datetime) -> float:
        column = _GROUP_COLUMNS[c.spend_scope(scope)]
        row = await self._call(
            _one,
            f"SELECT coalesce(sum(cost_usd), 0.0) FROM spend WHERE {column} = ? AND time >= ?",
            (id, _text(c.aware_time("since", since))),
        )
        assert row is not None  # an aggregate always has its row
        return float(row[0])

    # The request log

    async def add_requests(self, records: Sequence[Mapping[str, Any]]) -> int:
        if not records:
            return 0
        return await self._call(_add_requests, [_log_values(record) for record in records])

    async def list_requests(self, query: log.RequestQuery) -> log.RequestPage:
        sql, params = query.select()
        rows = await self._call(_all, sql, [_param(value) for value in params])
        return log.page_of([_logged(row) for row in rows], query.limit)

    async def get_request(self, request_id: str) -> dict[str, Any]:
        row = await self._call(_one, log.GET, (request_id,))
        if row is None:
            raise NotFoundError("request", request_id)
        return _logged(row)

    async def prune_requests(self, before: datetime, limit: int = log.PRUNE_BATCH) -> int:
        moment = _text(c.aware_time("before", before))
        return await self._call(_prune_requests, moment, limit)

    # The worker thread

    async def _call(self, job: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._run, job, args)

    def _run(self, job: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            db = self._db if self._db is not None else self._open()
            return job(db, *args)
        except sqlite3.Error as exc:
            # Set only on errors SQLite itself reported; the low byte is the primary code.
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _UNAVAILABLE:
                self._forget()
                raise StoreUnavailableError("sqlite", f"{self.path}: {exc}") from exc
            raise StoreError(f"sqlite store {self.path}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            _set_wal(db, self._busy_timeout_s)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self.migrations_applied = _migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    def _forget(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()  # rolls back whatever transaction a failure left open


def _set_wal(db: sqlite3.Connection, patience_s: float) -> None:
    """WAL mode. Switching to it needs the file to itself for a moment, and SQLite
    answers "locked" at once, without its busy timeout, when another connection opens
    at the same time (measured: 1 start in 100 of three stores starting together), so
    this retries for as long as a busy write would wait. In the worker thread: the
    sleep blocks no event loop."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


# Jobs: each runs in the worker thread with the open connection.


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock at BEGIN: a read-then-write transaction cannot
    # then fail half way because another process wrote in between.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _migrate(db: sqlite3.Connection) -> tuple[int, ...]:
    with _transaction(db):
        db.execute(SCHEMA_VERSION_TABLE["sqlite"])
        current = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        todo = pending(int(current[0]))
        for migration in todo:
            for statement in migration.sqlite:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.description, _text(utc_now())),
            )
    return tuple(migration.version for migration in todo)


def _one(db: sqlite3.Connection, sql: str, params: Any) -> sqlite3.Row | None:
    # fetchall, not fetchone: a statement left unfinished would block the COMMIT
    rows = db.execute(sql, params).fetchall()
    return rows[0] if rows else None


def _all(db: sqlite3.Connection, sql: str, params: Any) -> list[sqlite3.Row]:
    return db.execute(sql, params).fetchall()


def _exists(db: sqlite3.Connection, table: str, id: str) -> bool:
    return _one(db, f"SELECT 1 FROM {table} WHERE id = ?", (id,)) is not None


def _next_key_version(db: sqlite3.Connection) -> int:
    row = _one(db, "UPDATE key_version SET version = version + 1 RETURNING version", ())
    assert row is not None
    return int(row[0])


def _insert(db: sqlite3.Connection, table: str, values: Mapping[str, Any]) -> sqlite3.Row:
    columns = ", ".join(values)
    marks = ", ".join("?" * len(values))
    sql = f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING *"
    row = _one(db, sql, [_encode(field, value) for field, value in values.items()])
    assert row is not None
    return row


def _update(
    db: sqlite3.Connection, table: str, id: str, values: Mapping[str, Any]
) -> sqlite3.Row | None:
    sets = ", ".join(f"{field} = ?" for field in values)
    params = [_encode(field, value) for field, value in values.items()]
    return _one(db, f"UPDATE {table} SET {sets} WHERE id = ? RETURNING *", [*params, id])


def _create_team(db: sqlite3.Connection, values: dict[str, Any]) -> TeamRecord:
    now = utc_now()
    row = {"id": c.new_id("team"), **values, "created_at": now, "updated_at": now}
    try:
        with _transaction(db):
            return _team(_insert(db, "teams", row))
    except sqlite3.IntegrityError as exc:
        raise _conflict("team", exc, values) from None


def _update_team(db: sqlite3.Connection, team_id: str, values: dict[str, Any]) -> TeamRecord:
    try:
        with _transaction(db):
            row = _update(db, "teams", team_id, {**values, "updated_at": utc_now()})
            if row is None:
                raise NotFoundError("team", team_id)
            # Its keys' limits changed with it: readers of keys_changed_since re-read them.
            if _one(db, "SELECT 1 FROM api_keys WHERE team_id = ? LIMIT 1", (team_id,)):
                db.execute(
                    "UPDATE api_keys SET version = ? WHERE team_id = ?",
                    (_next_key_version(db), team_id),
                )
    except sqlite3.IntegrityError as exc:
        raise _conflict("team", exc, values) from None
    return _team(row)


def _delete_team(db: sqlite3.Connection, team_id: str) -> None:
    with _transaction(db):
        if not _exists(db, "teams", team_id):
            raise NotFoundError("team", team_id)
        active = _one(
            db,
            "SELECT count(*) FROM api_keys WHERE team_id = ? AND revoked_at IS NULL",
            (team_id,),
        )
        if active is not None and active[0]:
            raise ConflictError("team", c.active_keys_message(team_id, int(active[0])))
        if _one(db, "SELECT 1 FROM api_keys WHERE team_id = ? LIMIT 1", (team_id,)):
            db.execute(
                "UPDATE api_keys SET team_id = NULL, version = ?, updated_at = ? WHERE team_id = ?",
                (_next_key_version(db), _text(utc_now()), team_id),
            )
        db.execute("DELETE FROM teams WHERE id = ?", (team_id,))


def _create_key(db: sqlite3.Connection, values: dict[str, Any]) -> KeyRecord:
    now = utc_now()
    try:
        with _transaction(db):
            if values["team_id"] is not None and not _exists(db, "teams", values["team_id"]):
                raise NotFoundError("team", values["team_id"])
            row = {
                "id": c.new_id("key"),
                **values,
                "created_at": now,
                "updated_at": now,
                "version": _next_key_version(db),
            }
            return _key(_insert(db, "api_keys", row))
    except sqlite3.IntegrityError as exc:
        raise _conflict("key", exc, values) from None


def _update_key(db: sqlite3.Connection, key_id: str, values: dict[str, Any]) -> KeyRecord:
    try:
        with _transaction(db):
            team_id = values.get("team_id")
            if team_id is not None and not _exists(db, "teams", team_id):
                raise NotFoundError("team", team_id)
            changes = {**values, "updated_at": utc_now(), "version": _next_key_version(db)}
            row = _update(db, "api_keys", key_id, changes)
            if row is None:
                raise NotFoundError("key", key_id)  # rolls the version back too
    except sqlite3.IntegrityError as exc:
        raise _conflict("key", exc, values) from None
    return _key(row)


def _revoke_key(db: sqlite3.Connection, key_id: str) -> KeyRecord:
    with _transaction(db):
        row = _one(db, "SELECT * FROM api_keys WHERE id = ?", (key_id,))
        if row is None:
            raise NotFoundError("key", key_id)
        if row["revoked_at"] is not None:
            return _key(row)
        now = utc_now()
        changes = {"revoked_at": now, "updated_at": now, "version": _next_key_version(db)}
        updated = _update(db, "api_keys", key_id, changes)
        assert updated is not None
        return _key(updated)


def _rotate_key(
    db: sqlite3.Connection, key_id: str, new_hash: str, new_prefix: str, grace: timedelta
) -> KeyRecord:
    try:
        with _transaction(db):
            row = _one(db, "SELECT * FROM api_keys WHERE id = ?", (key_id,))
            if row is None:
                raise NotFoundError("key", key_id)
            if row["revoked_at"] is not None:
                raise ConflictError("key", f"key {key_id!r} is revoked: it cannot be rotated")
            changes = c.rotated(row["secret_hash"], new_hash, new_prefix, grace)
            changes["version"] = _next_key_version(db)
            updated = _update(db, "api_keys", key_id, changes)
            assert updated is not None
            return _key(updated)
    except sqlite3.IntegrityError as exc:
        raise _conflict("key", exc, {}) from None


def _keys_changed_since(db: sqlite3.Connection, version: int) -> KeyChanges:
    db.execute("BEGIN")  # one snapshot for both reads
    try:
        row = _one(db, "SELECT version FROM key_version", ())
        assert row is not None
        now = int(row[0])
        rows = _all(
            db,
            "SELECT * FROM api_keys WHERE version > ? AND version <= ? ORDER BY version",
            (version, now),
        )
    finally:
        db.execute("COMMIT")
    return KeyChanges(now, tuple(_key(row) for row in rows))


def _append_spend(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> int:
    before = db.total_changes
    with _transaction(db):
        db.executemany(
            f"INSERT INTO spend ({_SPEND_COLUMNS}) VALUES ({', '.join('?' * 12)})"
            " ON CONFLICT (time, request_id) DO NOTHING",
            rows,
        )
    return db.total_changes - before


def _add_requests(db: sqlite3.Connection, rows: list[list[Any]]) -> int:
    before = db.total_changes
    with _transaction(db):
        db.executemany(log.INSERT, rows)
    return db.total_changes - before


def _prune_requests(db: sqlite3.Connection, before: str, limit: int) -> int:
    with _transaction(db):
        return db.execute(log.PRUNE, (before, limit)).rowcount


# Between records and columns.


def _text(moment: datetime) -> str:
    """Fixed-width ISO text in UTC (``2025-01-31T09:00:00.000000+00:00``): it sorts as
    time does, so ranges are plain string comparisons."""
    if moment.tzinfo is not UTC:  # the gateway's rows are in UTC already: kept as they are
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _encode(field: str, value: Any) -> Any:
    if field == "metadata":
        return orjson.dumps(value).decode()
    if field == "models":
        return None if value is None else orjson.dumps(list(value)).decode()
    if isinstance(value, datetime):
        return _text(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _spend_values(row: SpendRow) -> tuple[Any, ...]:
    return (row[0], _text(row[1]), *row[2:])  # the row is its columns; times as text here


def _log_values(record: Mapping[str, Any]) -> list[Any]:
    values = log.row_of(record)
    for index in (-2, -1):  # attempts, content: JSON text
        if values[index] is not None:
            values[index] = orjson.dumps(values[index]).decode()
    values[1] = _text(values[1])
    return values


def _param(value: Any) -> Any:
    return _text(value) if isinstance(value, datetime) else value


def _logged(row: sqlite3.Row) -> dict[str, Any]:
    content = row["content"]
    return log.record_of(
        {
            **dict(row),
            "time": datetime.fromisoformat(row["time"]),
            "attempts": orjson.loads(row["attempts"]),
            "content": None if content is None else orjson.loads(content),
        }
    )


def _team(row: sqlite3.Row) -> TeamRecord:
    return TeamRecord(
        id=row["id"],
        name=row["name"],
        rpm=row["rpm"],
        tpm=row["tpm"],
        budget_usd=row["budget_usd"],
        budget_period=row["budget_period"],
        metadata=orjson.loads(row["metadata"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


def _key(row: sqlite3.Row) -> KeyRecord:
    models = row["models"]
    log_content = row["log_content"]
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        team_id=row["team_id"],
        secret_hash=row["secret_hash"],
        display_prefix=row["display_prefix"],
        models=None if models is None else tuple(orjson.loads(models)),
        rpm=row["rpm"],
        tpm=row["tpm"],
        budget_usd=row["budget_usd"],
        budget_period=row["budget_period"],
        expires_at=_time(row["expires_at"]),
        log_content=None if log_content is None else bool(log_content),
        metadata=orjson.loads(row["metadata"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        revoked_at=_time(row["revoked_at"]),
        previous_hash=row["previous_hash"],
        previous_valid_until=_time(row["previous_valid_until"]),
    )


def _conflict(kind: str, error: sqlite3.IntegrityError, values: Mapping[str, Any]) -> StoreError:
    # SQLite names the column: "UNIQUE constraint failed: api_keys.secret_hash"
    return c.unique_violation(kind, str(error), values)
