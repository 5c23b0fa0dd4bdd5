"""The store's schema, as numbered migrations applied in order when a store starts.

Each migration carries its statements for both dialects side by side, so that the
two schemas cannot drift apart unnoticed. They differ where the types do: SQLite
keeps times as fixed-width ISO-8601 UTC text (which sorts as time does, and reads
plainly in the sqlite3 shell), JSON as text and booleans as 0/1; PostgreSQL has
``timestamptz``, ``jsonb``, ``text[]`` and ``boolean``.

Applied versions are recorded in ``schema_version`` (one row each), in the same
transaction as the migration itself (both databases have transactional DDL), so a
start that fails half way leaves the schema as it was. A database written by a newer
polyroute is refused rather than guessed at.

Never edit a released migration: add a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from polyroute.store.contract import StoreError

Dialect: TypeAlias = Literal["sqlite", "postgres"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema; ``version`` numbers are consecutive from 1."""

    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    def statements(self, dialect: Dialect) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgres


SCHEMA_VERSION_TABLE: dict[Dialect, str] = {
    "sqlite": """CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER PRIMARY KEY,
        description TEXT NOT NULL,
        applied_at TEXT NOT NULL)""",
    "postgres": """CREATE TABLE IF NOT EXISTS schema_version (
        version integer PRIMARY KEY,
        description text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now())""",
}

POSTGRES_LOCK_ID = 0x706F6C79_726F7574  # "polyrout": one migrating process at a time
"""The advisory lock taken while migrating, so that processes starting together
against one database apply each migration once."""

# Money is double precision (REAL in SQLite): costs are estimates built from per-token
# prices, and a float64 sum keeps 15 significant digits, far below a cent for any
# realistic ledger; numeric would come back as Decimal and cost a conversion on every
# read, and both backends then answer budget checks with the same arithmetic.
_TEAMS_AND_KEYS = Migration(
    version=1,
    description="teams, API keys, the key version counter",
    sqlite=(
        """CREATE TABLE teams (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            rpm INTEGER,
            tpm INTEGER,
            budget_usd REAL,
            budget_period TEXT CHECK (budget_period IN ('day', 'week', 'month', 'total')),
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            team_id TEXT REFERENCES teams (id),
            secret_hash TEXT NOT NULL UNIQUE,
            display_prefix TEXT NOT NULL,
            models TEXT,
            rpm INTEGER,
            tpm INTEGER,
            budget_usd REAL,
            budget_period TEXT CHECK (budget_period IN ('day', 'week', 'month', 'total')),
            expires_at TEXT,
            log_content INTEGER,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            revoked_at TEXT,
            previous_hash TEXT,
            previous_valid_until TEXT,
            version INTEGER NOT NULL)""",
        "CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL",
        "CREATE INDEX api_keys_previous_hash ON api_keys (previous_hash)"
        " WHERE previous_hash IS NOT NULL",
        "CREATE INDEX api_keys_version ON api_keys (version)",
        "CREATE INDEX api_keys_team ON api_keys (team_id)",
        """CREATE TABLE key_version (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL)""",
        "INSERT INTO key_version (id, version) VALUES (1, 0)",
    ),
    postgres=(
        """CREATE TABLE teams (
            id text PRIMARY KEY,
            name text NOT NULL UNIQUE,
            rpm integer,
            tpm integer,
            budget_usd double precision,
            budget_period text CHECK (budget_period IN ('day', 'week', 'month', 'total')),
            metadata jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL)""",
        """CREATE TABLE api_keys (
            id text PRIMARY KEY,
            name text NOT NULL,
            team_id text REFERENCES teams (id),
            secret_hash text NOT NULL UNIQUE,
            display_prefix text NOT NULL,
            models text[],
            rpm integer,
            tpm integer,
            budget_usd double precision,
            budget_period text CHECK (budget_period IN ('day', 'week', 'month', 'total')),
            expires_at timestamptz,
            log_content boolean,
            metadata jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            revoked_at timestamptz,
            previous_hash text,
            previous_valid_until timestamptz,
            version bigint NOT NULL)""",
        "CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL",
        "CREATE INDEX api_keys_previous_hash ON api_keys (previous_hash)"
        " WHERE previous_hash IS NOT NULL",
        "CREATE INDEX api_keys_version ON api_keys (version)",
        "CREATE INDEX api_keys_team ON api_keys (team_id)",
        # One row, updated by every key change in its transaction: the row lock makes
        # versions commit in order, so a reader that saw version N has seen every
        # change up to N (a sequence would hand out numbers that commit out of order).
        """CREATE TABLE key_version (
            id integer PRIMARY KEY CHECK (id = 1),
            version bigint NOT NULL)""",
        "INSERT INTO key_version (id, version) VALUES (1, 0)",
    ),
)

_SPEND_LEDGER = Migration(
    version=2,
    description="the spend ledger",
    sqlite=(
        # No foreign keys: the ledger is history, it outlives the keys and teams it names.
        """CREATE TABLE spend (
            request_id TEXT PRIMARY KEY,
            time TEXT NOT NULL,
            key_id TEXT,
            team_id TEXT,
            model TEXT NOT NULL,
            provider TEXT NOT NULL,
            input_tokens INTEGER NOT NULL,
            cached_input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            reasoning_tokens INTEGER NOT NULL,
            cost_usd REAL,
            cost_status TEXT NOT NULL CHECK (cost_status IN ('exact', 'estimated', 'unpriced')))""",
        "CREATE INDEX spend_time ON spend (time)",
        "CREATE INDEX spend_key_time ON spend (key_id, time)",
        "CREATE INDEX spend_team_time ON spend (team_id, time)",
    ),
    postgres=(
        """CREATE TABLE spend (
            request_id text PRIMARY KEY,
            time timestamptz NOT NULL,
            key_id text,
            team_id text,
            model text NOT NULL,
            provider text NOT NULL,
            input_tokens bigint NOT NULL,
            cached_input_tokens bigint NOT NULL,
            output_tokens bigint NOT NULL,
            reasoning_tokens bigint NOT NULL,
            cost_usd double precision,
            cost_status text NOT NULL CHECK (cost_status IN ('exact', 'estimated', 'unpriced')))""",
        "CREATE INDEX spend_time ON spend (time)",
        "CREATE INDEX spend_key_time ON spend (key_id, time)",
        "CREATE INDEX spend_team_time ON spend (team_id, time)",
    ),
)

_STATUSES = "('complete', 'switched', 'truncated', 'failed', 'cancelled')"
_COST_STATUSES = "('exact', 'estimated', 'unpriced')"
# One row per request (docs/observability.md). Its key is (time, id): the client's
# x-request-id may repeat, two requests ending in the same microsecond with the same id
# do not, and a batch written twice (its answer lost) counts once. The key also serves
# the newest-first pages; the other indexes, the filters, each then by time. No foreign
# keys: the log holds names, and outlives the keys and teams it names.
_REQUEST_LOG = Migration(
    version=3,
    description="the request log",
    sqlite=(
        f"""CREATE TABLE request_log (
            id TEXT NOT NULL,
            time TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            key_name TEXT,
            team_name TEXT,
            model TEXT NOT NULL,
            resolved_model TEXT,
            provider TEXT,
            status TEXT NOT NULL CHECK (status IN {_STATUSES}),
            finish_reason TEXT,
            ttft_ms REAL,
            duration_ms REAL NOT NULL,
            input_tokens INTEGER NOT NULL,
            cached_input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            reasoning_tokens INTEGER NOT NULL,
            cost_usd REAL,
            cost_status TEXT NOT NULL CHECK (cost_status IN {_COST_STATUSES}),
            cache TEXT,
            error_type TEXT,
            error TEXT,
            attempts TEXT NOT NULL,
            content TEXT,
            PRIMARY KEY (time, id))""",
        "CREATE INDEX request_log_id ON request_log (id)",
        "CREATE INDEX request_log_key ON request_log (key_name, time)",
        "CREATE INDEX request_log_model ON request_log (model, time)",
        "CREATE INDEX request_log_resolved_model ON request_log (resolved_model, time)",
        "CREATE INDEX request_log_provider ON request_log (provider, time)",
        "CREATE INDEX request_log_status ON request_log (status, time)",
    ),
    postgres=(
        f"""CREATE TABLE request_log (
            id text NOT NULL,
            time timestamptz NOT NULL,
            endpoint text NOT NULL,
            key_name text,
            team_name text,
            model text NOT NULL,
            resolved_model text,
            provider text,
            status text NOT NULL CHECK (status IN {_STATUSES}),
            finish_reason text,
            ttft_ms double precision,
            duration_ms double precision NOT NULL,
            input_tokens bigint NOT NULL,
            cached_input_tokens bigint NOT NULL,
            output_tokens bigint NOT NULL,
            reasoning_tokens bigint NOT NULL,
            cost_usd double precision,
            cost_status text NOT NULL CHECK (cost_status IN {_COST_STATUSES}),
            cache text,
            error_type text,
            error text,
            attempts jsonb NOT NULL,
            content jsonb,
            PRIMARY KEY (time, id))""",
        "CREATE INDEX request_log_id ON request_log (id)",
        "CREATE INDEX request_log_key ON request_log (key_name, time)",
        "CREATE INDEX request_log_model ON request_log (model, time)",
        "CREATE INDEX request_log_resolved_model ON request_log (resolved_model, time)",
        "CREATE INDEX request_log_provider ON request_log (provider, time)",
        "CREATE INDEX request_log_status ON request_log (status, time)",
    ),
)

_SPEND_COLUMNS = (
    "request_id, time, key_id, team_id, model, provider, input_tokens, cached_input_tokens,"
    " output_tokens, reasoning_tokens, cost_usd, cost_status"
)
# The ledger keyed as the request log is, by (time, request id): request ids are
# scrambled on purpose (polyroute.core.logging), so a key on them alone put every row
# at a random place in its B-tree, which was half of SQLite's cost of a row (13 us a row
# before, 9 after, measured with 200-row batches into a table of 10,000); times grow, so
# rows now go at the end. The key also serves the time ranges, so `spend_time` goes. A
# batch written twice still counts once: a row's time is set when it is made.
_SPEND_BY_TIME = Migration(
    version=4,
    description="the spend ledger keyed by (time, request_id)",
    sqlite=(
        """CREATE TABLE spend_by_time (
            request_id TEXT NOT NULL,
            time TEXT NOT NULL,
            key_id TEXT,
            team_id TEXT,
            model TEXT NOT NULL,
            provider TEXT NOT NULL,
            input_tokens INTEGER NOT NULL,
            cached_input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            reasoning_tokens INTEGER NOT NULL,
            cost_usd REAL,
            cost_status TEXT NOT NULL CHECK (cost_status IN ('exact', 'estimated', 'unpriced')),
            PRIMARY KEY (time, request_id))""",
        f"INSERT INTO spend_by_time ({_SPEND_COLUMNS}) SELECT {_SPEND_COLUMNS} FROM spend",
        "DROP TABLE spend",  # its indexes with it
        "ALTER TABLE spend_by_time RENAME TO spend",
        "CREATE INDEX spend_key_time ON spend (key_id, time)",
        "CREATE INDEX spend_team_time ON spend (team_id, time)",
    ),
    postgres=(
        "ALTER TABLE spend DROP CONSTRAINT spend_pkey",
        "ALTER TABLE spend ADD PRIMARY KEY (time, request_id)",
        "DROP INDEX spend_time",
    ),
)

MIGRATIONS: tuple[Migration, ...] = (
    _TEAMS_AND_KEYS,
    _SPEND_LEDGER,
    _REQUEST_LOG,
    _SPEND_BY_TIME,
)
LATEST = MIGRATIONS[-1].version


def pending(current: int) -> list[Migration]:
    """The migrations to apply to a database at version ``current`` (0: empty), in order.

    Raises :class:`StoreError` when the database is newer than this code knows.
    """
    if current > LATEST:
        raise StoreError(
            f"the store's schema is at version {current}, newer than this polyroute "
            f"knows ({LATEST}): upgrade polyroute, or point it at another database"
        )
    return [migration for migration in MIGRATIONS if migration.version > current]
