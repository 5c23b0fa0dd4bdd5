"""Schema migrations, on both backends: applied once, in order, recorded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from polyroute.store import SCHEMA_VERSION, StoreError
from polyroute.store.migrations import MIGRATIONS, SCHEMA_VERSION_TABLE, Dialect
from tests.store.conftest import Database

ALL = tuple(migration.version for migration in MIGRATIONS)


async def test_a_second_start_applies_nothing(database: Database) -> None:
    first = database.store()
    await first.start()
    await first.start()  # idempotent on one store as well
    await first.aclose()
    assert first.migrations_applied == ALL  # type: ignore[attr-defined]
    recorded = await database.query("SELECT version, applied_at FROM schema_version")
    second = database.store()
    await second.start()
    await second.aclose()
    assert second.migrations_applied == ()  # type: ignore[attr-defined]
    assert await database.query("SELECT version, applied_at FROM schema_version") == recorded
    assert await database.query("SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION,)]
    assert [version for version, _ in recorded] == list(range(1, SCHEMA_VERSION + 1))


async def test_a_database_of_an_older_version_is_brought_up_to_date(database: Database) -> None:
    first = MIGRATIONS[0]
    dialect: Dialect = "sqlite" if database.backend == "sqlite" else "postgres"
    await database.execute(
        SCHEMA_VERSION_TABLE[dialect],
        *first.statements(dialect),
        "INSERT INTO schema_version (version, description, applied_at)"
        " VALUES (1, 'by an older polyroute', '2025-01-01T00:00:00.000000+00:00')",
    )
    store = database.store()
    await store.start()
    try:
        assert store.migrations_applied == ALL[1:]  # type: ignore[attr-defined]
        assert await store.append_spend([]) == 0
        assert await store.spend("day") == []
    finally:
        await store.aclose()
    rows = await database.query("SELECT version, description FROM schema_version")
    assert rows[0] == (1, "by an older polyroute")
    assert [version for version, _ in rows] == list(ALL)


async def test_the_ledger_keeps_its_rows_when_keyed_by_time(database: Database) -> None:
    dialect: Dialect = "sqlite" if database.backend == "sqlite" else "postgres"
    before = [migration for migration in MIGRATIONS if migration.version < 4]
    await database.execute(
        SCHEMA_VERSION_TABLE[dialect],
        *(statement for migration in before for statement in migration.statements(dialect)),
        *(
            "INSERT INTO schema_version (version, description, applied_at)"
            f" VALUES ({m.version}, 'older', '2025-01-01T00:00:00.000000+00:00')"
            for m in before
        ),
        "INSERT INTO spend VALUES ('r1', '2025-03-10T12:00:00.000000+00:00', 'k1', 't1',"
        " 'gpt-test', 'openai', 100, 10, 20, 5, 0.25, 'exact')",
    )
    store = database.store()
    await store.start()
    try:
        assert store.migrations_applied == ALL[3:]  # type: ignore[attr-defined]
        assert [(g.group, g.requests, g.cost_usd) for g in await store.spend("key")] == [
            ("k1", 1, 0.25)
        ]
        assert await store.spent("key", "k1", datetime(2025, 3, 10, tzinfo=UTC)) == 0.25
    finally:
        await store.aclose()


async def test_a_database_of_a_newer_polyroute_is_refused(database: Database) -> None:
    store = database.store()
    await store.start()
    await store.aclose()
    await database.execute(
        "INSERT INTO schema_version (version, description, applied_at)"
        f" VALUES ({SCHEMA_VERSION + 1}, 'from the future', '2030-01-01T00:00:00.000000+00:00')"
    )
    newer = database.store()
    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1}, newer"):
        await newer.start()
    await newer.aclose()


async def test_stores_starting_together_apply_each_migration_once(database: Database) -> None:
    # patient SQLite stores: they take turns at the file's write lock
    stores = [database.store(busy_timeout_s=5.0) for _ in range(3)]
    await asyncio.gather(*(store.start() for store in stores))
    for store in stores:
        await store.aclose()
    applied = sorted(store.migrations_applied for store in stores)  # type: ignore[attr-defined]
    assert applied == [(), (), ALL]
    assert await database.query("SELECT count(*) FROM schema_version") == [(len(ALL),)]
