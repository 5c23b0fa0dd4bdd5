"""The governance store: teams, API keys, the spend ledger and the request log, kept
across restarts in SQLite or PostgreSQL behind one contract (docs/store.md).

The router never imports this package; the gateway and the CLI, at the top, build a
store from the ``store:`` configuration, hand the ledger its rows and the request log
the router's records (docs/observability.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from polyroute.core.errors import ConfigError
from polyroute.store.config import LogsConfig, StoreConfig, load_store_config
from polyroute.store.contract import (
    BudgetPeriod,
    ConflictError,
    CostStatus,
    InvalidValueError,
    KeyChanges,
    KeyRecord,
    KeyUpdate,
    NewKey,
    NewTeam,
    NotFoundError,
    SpendGroup,
    SpendGroupBy,
    SpendRow,
    SpendScope,
    Store,
    StoreError,
    StoreUnavailableError,
    TeamRecord,
    TeamUpdate,
    budget_window_start,
    hash_secret,
)
from polyroute.store.ledger import LedgerWriter
from polyroute.store.log_writer import RequestLogWriter, Retention
from polyroute.store.migrations import LATEST as SCHEMA_VERSION
from polyroute.store.request_log import RequestPage, RequestQuery
from polyroute.store.sqlite import SqliteStore
from polyroute.store.writer import BatchWriter

if TYPE_CHECKING:
    from polyroute.store.postgres import PostgresStore

__all__ = [
    "SCHEMA_VERSION",
    "BatchWriter",
    "BudgetPeriod",
    "ConflictError",
    "CostStatus",
    "InvalidValueError",
    "KeyChanges",
    "KeyRecord",
    "KeyUpdate",
    "LedgerWriter",
    "LogsConfig",
    "NewKey",
    "NewTeam",
    "NotFoundError",
    "PostgresStore",
    "RequestLogWriter",
    "RequestPage",
    "RequestQuery",
    "Retention",
    "SpendGroup",
    "SpendGroupBy",
    "SpendRow",
    "SpendScope",
    "SqliteStore",
    "Store",
    "StoreConfig",
    "StoreError",
    "StoreUnavailableError",
    "TeamRecord",
    "TeamUpdate",
    "budget_window_start",
    "build_store",
    "hash_secret",
    "load_store_config",
]


def build_store(config: StoreConfig, *, environ: Mapping[str, str] | None = None) -> Store:
    """The store ``config`` describes, not yet started (``await store.start()``).

    For postgres, the DSN is read from the variable ``config.dsn_env`` names (in
    ``environ``, by default the process's environment). Raises :class:`ConfigError`
    when it is unset, or when asyncpg is not installed.
    """
    if config.backend == "sqlite":
        return SqliteStore(config.path)
    assert config.dsn_env is not None  # StoreConfig requires it with postgres
    dsn = (os.environ if environ is None else environ).get(config.dsn_env)
    if not dsn:
        raise ConfigError(
            f"store.dsn_env: environment variable {config.dsn_env} is not set; "
            "it must hold the PostgreSQL DSN (postgresql://user:password@host/database)"
        )
    from polyroute.store.postgres import PostgresStore

    return PostgresStore(dsn)


def __getattr__(name: str) -> Any:
    # PostgresStore on demand: importing asyncpg costs ~0.1 s that SQLite users skip.
    if name == "PostgresStore":
        from polyroute.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
