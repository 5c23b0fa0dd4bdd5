"""A store whose database is out of reach: a typed, retryable error, then service again
once the database is back, without a new store."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from polyroute.store import SqliteStore, Store, StoreError, StoreUnavailableError
from polyroute.store.migrations import MIGRATIONS
from polyroute.store.postgres import PostgresStore
from tests.server.helpers import free_port
from tests.store.conftest import Database, spend_row


async def test_a_store_out_of_reach_raises_unavailable_then_recovers(
    database: Database, store: Store
) -> None:
    team = await store.create_team(name="ops")
    async with database.outage():
        with pytest.raises(StoreUnavailableError) as caught:
            await store.append_spend([spend_row("r1")])
        assert caught.value.backend == database.backend
        assert caught.value.retryable
    assert await store.append_spend([spend_row("r1")]) == 1
    assert await store.get_team(team.id) == team


async def test_a_sqlite_store_that_could_not_open_its_file_opens_it_later(tmp_path: Path) -> None:
    path = tmp_path / "not-yet" / "store.db"
    store = SqliteStore(path)
    try:
        with pytest.raises(StoreUnavailableError, match="unable to open"):
            await store.start()
        path.parent.mkdir()
        assert await store.append_spend([spend_row("r1")]) == 1  # opened and migrated now
        assert store.migrations_applied == tuple(m.version for m in MIGRATIONS)
    finally:
        await store.aclose()


async def test_a_store_that_could_not_start_starts_on_its_next_call(database: Database) -> None:
    store = database.store()
    try:
        async with database.outage():
            with pytest.raises(StoreUnavailableError):
                await store.start()
        assert await store.append_spend([spend_row("r1")]) == 1  # connected and migrated
        assert store.migrations_applied == tuple(m.version for m in MIGRATIONS)  # type: ignore[attr-defined]
    finally:
        await store.aclose()


async def test_the_dsn_password_shows_in_no_error_and_no_repr() -> None:
    password = "hunter2-secret"
    store = PostgresStore(f"postgresql://polyroute:{password}@127.0.0.1:{free_port()}/x")
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            await store.start()
        assert caught.value.__cause__ is None  # the driver's error may quote its DSN
        for text in (str(caught.value), repr(caught.value), repr(store)):
            assert password not in text
        assert "127.0.0.1" in repr(store)
    finally:
        await store.aclose()


async def test_a_closed_store_refuses_calls(store: Store) -> None:
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await store.list_teams()
    await store.aclose()  # closing twice is fine


async def test_a_sqlite_store_waiting_on_its_file_leaves_the_event_loop_free(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "store.db", busy_timeout_s=0.3)
    await store.start()
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)  # one turn of the loop, no waiting

    counter = asyncio.create_task(count_turns())
    blocker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailableError, match="locked"):
            await store.append_spend([spend_row("r1")])  # 0.3 s waiting in its thread
    finally:
        blocker.close()
        counter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counter
        await store.aclose()
    assert turns > 100  # the loop kept turning the whole time


async def test_a_sqlite_store_keeps_its_file_in_wal_mode(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    await store.start()
    await store.aclose()
    with contextlib.closing(sqlite3.connect(tmp_path / "store.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
