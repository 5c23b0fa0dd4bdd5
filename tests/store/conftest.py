"""Stores under test: every behaviour runs on SQLite (a file in a temporary directory)
and on PostgreSQL (a fresh database in the session's real cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from polyroute.store import SpendRow, SqliteStore, Store
from polyroute.store.postgres import PostgresStore
from tests.store.postgres_server import PostgresServer


@dataclass
class Database:
    """Where a test's store lives; :meth:`store` opens another store on it (a restart,
    a second process)."""

    backend: str
    path: Path | None = None
    dsn: str | None = None
    server: PostgresServer | None = None

    def store(self, *, busy_timeout_s: float = 0.1) -> Store:
        """A new store here; SQLite waits ``busy_timeout_s`` for another writer (0.1 s,
        not the default 5, so that an outage below costs the tests little)."""
        if self.backend == "sqlite":
            assert self.path is not None
            return SqliteStore(self.path, busy_timeout_s=busy_timeout_s)
        assert self.dsn is not None
        return PostgresStore(self.dsn)

    @asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """The database out of reach until the block ends: the PostgreSQL server
        stopped, or the SQLite file locked by another process's write transaction
        (what a backup or a stuck writer does)."""
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            try:
                yield
            finally:
                await asyncio.to_thread(self.server.start)
            return
        assert self.path is not None
        blocker = sqlite3.connect(self.path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            yield
        finally:
            blocker.close()

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` read straight from the database, past the store."""
        if self.path is not None:
            with contextlib.closing(sqlite3.connect(self.path)) as db:
                return [tuple(row) for row in db.execute(sql)]
        connection = await asyncpg.connect(self.dsn)
        try:
            return [tuple(row) for row in await connection.fetch(sql)]
        finally:
            await connection.close()

    async def execute(self, *statements: str) -> None:
        """Run ``statements`` in one transaction, past the store."""
        if self.path is not None:
            with contextlib.closing(sqlite3.connect(self.path)) as db, db:
                for statement in statements:
                    db.execute(statement)
            return
        connection = await asyncpg.connect(self.dsn)
        try:
            async with connection.transaction():
                for statement in statements:
                    await connection.execute(statement)
        finally:
            await connection.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session (each test gets a database of its own)."""
    server = PostgresServer().init().start()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        yield Database("sqlite", path=tmp_path / "store.db")
        return
    # Asked for here, not as an argument: SQLite-only runs need no PostgreSQL.
    server: PostgresServer = request.getfixturevalue("postgres_server")
    # A schema per test, chosen by the DSN's search_path (asyncpg passes unknown DSN
    # parameters on as server settings): a fresh, empty place like a new database,
    # created in well under a millisecond where CREATE DATABASE takes 0.1-0.3 s.
    schema = f"test_{secrets.token_hex(6)}"
    await _admin(server, f"CREATE SCHEMA {schema}")
    yield Database("postgres", dsn=f"{server.dsn()}?search_path={schema}", server=server)
    if server.running:  # a test that stopped the server has started it again
        await _admin(server, f"DROP SCHEMA {schema} CASCADE")


async def _admin(server: PostgresServer, statement: str) -> None:
    connection = await asyncpg.connect(server.dsn())
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    """A started store on a fresh database."""
    store = database.store()
    await store.start()
    yield store
    await store.aclose()


def spend_row(request_id: str, **fields: Any) -> SpendRow:
    """A priced row at noon UTC on 2025-03-10 (a Monday), for key ``k1`` of team ``t1``."""
    values: dict[str, Any] = {
        "request_id": request_id,
        "time": datetime(2025, 3, 10, 12, 0, tzinfo=UTC),
        "key_id": "k1",
        "team_id": "t1",
        "model": "gpt-test",
        "provider": "openai",
        "input_tokens": 100,
        "cached_input_tokens": 10,
        "output_tokens": 20,
        "reasoning_tokens": 5,
        "cost_usd": 0.25,
        "cost_status": "exact",
    }
    return SpendRow(**{**values, **fields})
