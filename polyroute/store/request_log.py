"""The request log's table: one row per request, read back in the record's one JSON shape
(docs/observability.md), written and read alike by both backends.

The store takes records as that JSON shape (what ``RequestRecord.as_json()`` gives),
so that it needs nothing of the router's: the gateway and the CLI, above both, hand
records over. Scalars are columns (filters and indexes, and plain SQL for whoever
queries the table), the attempts and the content JSON. The statements are written
once, with ``?`` marks, and numbered for PostgreSQL (:func:`numbered`).

Reading is newest first, by a keyset cursor on ``(time, id)``: a page never skips or
repeats a row however many are written meanwhile, and costs the same deep in the log
as at its head.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from polyroute.store.contract import COST_STATUSES, InvalidValueError, aware_time

REQUEST_STATUSES = ("complete", "switched", "truncated", "failed", "cancelled")
DEFAULT_PAGE = 50
MAX_PAGE = 1000
PRUNE_BATCH = 5000
"""Rows one prune statement deletes at most: the write lock is held briefly, and the
writers in between get their turn (SQLite has one writer at a time)."""

_TOKENS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")
_ATTEMPT_FIELDS = ("provider", "model", "outcome", "error_type", "error", "status_code",
                   "started_ms", "ttft_ms", "duration_ms", "chars", "relay_offset")  # fmt: skip
# The columns, in the shape's order; the shape's `key` and `team` are key_name and
# team_name here (KEY is a keyword in SQL), its `usage` four columns.
COLUMNS = ("id", "time", "endpoint", "key_name", "team_name", "model", "resolved_model",
           "provider", "status", "finish_reason", "ttft_ms", "duration_ms", *_TOKENS,
           "cost_usd", "cost_status", "cache", "error_type", "error", "attempts",
           "content")  # fmt: skip
_RENAMED = {"key_name": "key", "team_name": "team"}

INSERT = (
    f"INSERT INTO request_log ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    " ON CONFLICT (time, id) DO NOTHING"
)
GET = "SELECT * FROM request_log WHERE id = ? ORDER BY time DESC LIMIT 1"
PRUNE = (
    "DELETE FROM request_log WHERE (time, id) IN"
    " (SELECT time, id FROM request_log WHERE time < ? ORDER BY time LIMIT ?)"
)


@dataclass(frozen=True, slots=True)
class RequestQuery:
    """Which records to read, newest first: those matching every filter given (``model``
    matches the requested or the resolved model; ``key`` is a key's name), from
    ``since`` on, at most ``limit``, after ``cursor`` (a page's ``next_cursor``).
    Raises :class:`InvalidValueError` for an unknown status, a limit out of 1..1000, a
    naive ``since`` or a cursor that is not one."""

    key: str | None = None
    model: str | None = None
    provider: str | None = None
    status: str | None = None
    since: datetime | None = None
    limit: int = DEFAULT_PAGE
    cursor: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in REQUEST_STATUSES:
            raise InvalidValueError("status", f"must be one of {', '.join(REQUEST_STATUSES)}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise InvalidValueError("limit", f"must be a whole number from 1 to {MAX_PAGE}")
        if not 1 <= self.limit <= MAX_PAGE:
            raise InvalidValueError("limit", f"must be a whole number from 1 to {MAX_PAGE}")
        if self.since is not None:
            aware_time("since", self.since)
        if self.cursor is not None:
            decode_cursor(self.cursor)

    def select(self) -> tuple[str, list[Any]]:
        """The statement (``?`` marks; times as datetimes) reading one more row than
        ``limit``, to know whether a next page exists."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("key_name", self.key),
            ("provider", self.provider),
            ("status", self.status),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if self.model is not None:
            where.append("(model = ? OR resolved_model = ?)")
            params += [self.model, self.model]
        if self.since is not None:
            where.append("time >= ?")
            params.append(aware_time("since", self.since))
        if self.cursor is not None:
            time, id = decode_cursor(self.cursor)
            where.append("(time < ? OR (time = ? AND id < ?))")
            params += [time, time, id]
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT * FROM request_log{condition} ORDER BY time DESC, id DESC LIMIT ?"
        return sql, [*params, self.limit + 1]


@dataclass(frozen=True, slots=True)
class RequestPage:
    """A page of records (their JSON shape), newest first, and the cursor of the next
    page (``None``: this was the last)."""

    data: list[dict[str, Any]]
    next_cursor: str | None

    def as_json(self) -> dict[str, Any]:
        """As ``GET /admin/requests`` answers it."""
        return {"object": "list", "data": self.data, "next_cursor": self.next_cursor}


def page_of(records: list[dict[str, Any]], limit: int) -> RequestPage:
    """The page of ``records`` read by :meth:`RequestQuery.select` (``limit`` + 1 at
    most): the cursor points past its last one when there are more."""
    if len(records) <= limit:
        return RequestPage(records, None)
    kept = records[:limit]
    last = kept[-1]
    return RequestPage(kept, encode_cursor(datetime.fromisoformat(last["time"]), last["id"]))


def row_of(record: Mapping[str, Any]) -> list[Any]:
    """A record's JSON shape as the table's values, in :data:`COLUMNS` order (``time``
    a datetime, ``attempts`` and ``content`` still objects: each backend encodes
    them its way). Raises :class:`InvalidValueError` for a mapping that is not one."""
    # Written out, not a loop over COLUMNS through dicts: this runs for every request
    # logged (1.7 us a record against 9 to 12, measured).
    try:
        get = record.get
        usage = get("usage") or _NO_USAGE
        values = [
            record["id"], _time(record["time"]), record["endpoint"], get("key"), get("team"),
            record["model"], get("resolved_model"), get("provider"), record["status"],
            get("finish_reason"), get("ttft_ms"), record["duration_ms"],
            int(usage.get("input_tokens") or 0), int(usage.get("cached_input_tokens") or 0),
            int(usage.get("output_tokens") or 0), int(usage.get("reasoning_tokens") or 0),
            get("cost_usd"), record["cost_status"], get("cache"), get("error_type"),
            get("error"), list(get("attempts") or ()), get("content"),
        ]  # fmt: skip
    except KeyError as missing:
        raise InvalidValueError(f"record.{missing.args[0]}", "is required") from None
    except (TypeError, ValueError, AttributeError) as error:
        raise InvalidValueError("record", f"not a request record ({error!r})") from None
    for index in _REQUIRED:
        if values[index] is None:
            raise InvalidValueError(f"record.{COLUMNS[index]}", "is required")
    if values[_STATUS] not in REQUEST_STATUSES:
        raise InvalidValueError("record.status", f"must be one of {', '.join(REQUEST_STATUSES)}")
    if values[_COST_STATUS] not in COST_STATUSES:
        raise InvalidValueError("record.cost_status", f"must be one of {sorted(COST_STATUSES)}")
    return values


_NO_USAGE: Mapping[str, Any] = {}
_REQUIRED = tuple(COLUMNS.index(name) for name in ("id", "endpoint", "model", "status",
                                                   "cost_status", "duration_ms"))  # fmt: skip
_STATUS, _COST_STATUS = COLUMNS.index("status"), COLUMNS.index("cost_status")


def record_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row (columns by name; ``time`` a datetime, ``attempts`` and ``content``
    decoded) as the record's JSON shape."""
    shaped: dict[str, Any] = {}
    for column in COLUMNS:
        if column == _TOKENS[0]:  # the four token columns, in the shape's place
            shaped["usage"] = {name: row[name] for name in _TOKENS}
        elif column not in _TOKENS:
            shaped[_RENAMED.get(column, column)] = row[column]
    shaped["time"] = rfc3339(row["time"])
    shaped["attempts"] = [
        {name: attempt.get(name) for name in _ATTEMPT_FIELDS} for attempt in row["attempts"]
    ]
    return shaped


def encode_cursor(time: datetime, id: str) -> str:
    """An opaque cursor for the rows after ``(time, id)``, newest first."""
    text = orjson.dumps([rfc3339(time), id])
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(time, id)`` a cursor points past; :class:`InvalidValueError` for one that
    :func:`encode_cursor` did not make."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        time, id = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        return _time(time), str(id)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError, UnicodeError):
        raise InvalidValueError("cursor", "not a cursor this store gave") from None


def numbered(sql: str) -> str:
    """``?`` marks as PostgreSQL's ``$1``, ``$2``... (the statements hold no other ``?``)."""
    count = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and ``Z``: the shape's times."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return aware_time("time", value)
    moment = datetime.fromisoformat(value)
    return aware_time("time", moment)
