"""The spend ledger's table, on both backends: idempotent appends, sums for reports and
for budget checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from polyroute.store import (
    InvalidValueError,
    SpendGroup,
    Store,
    StoreError,
    StoreUnavailableError,
)
from tests.store.conftest import Database, spend_row

MONDAY = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


async def test_a_row_is_recorded_once_however_often_it_is_sent(store: Store) -> None:
    batch = [spend_row("r1"), spend_row("r2")]
    assert await store.append_spend(batch) == 2
    assert await store.append_spend(batch) == 0  # the batch again: its answer was lost
    assert await store.append_spend([spend_row("r2"), spend_row("r3")]) == 1
    assert await store.append_spend([spend_row("r4"), spend_row("r4")]) == 1
    assert await store.append_spend([]) == 0
    # A row is its time and id: the id again at another time is another request.
    assert await store.append_spend([spend_row("r1", time=MONDAY + timedelta(seconds=1))]) == 1
    (total,) = await store.spend("key")
    assert total == SpendGroup("k1", requests=5, input_tokens=500, output_tokens=100, cost_usd=1.25)


async def test_a_batch_is_one_transaction(database: Database, store: Store) -> None:
    broken = spend_row("r2", model=None)  # NOT NULL in both schemas
    with pytest.raises(StoreError, match="model") as refused:
        await store.append_spend([spend_row("r1"), broken])
    assert not isinstance(refused.value, StoreUnavailableError)
    assert await database.query("SELECT request_id FROM spend") == []


async def test_spend_is_summed_by_each_grouping(store: Store) -> None:
    await store.append_spend(
        [
            spend_row("r1"),
            spend_row("r2", key_id="k2", model="claude", provider="anthropic", cost_usd=1.5),
            spend_row("r3", key_id=None, team_id=None, time=MONDAY + timedelta(days=1)),
            spend_row("r4", cost_usd=None, cost_status="unpriced", output_tokens=7),
        ]
    )
    by_key = await store.spend("key")
    assert by_key == [
        SpendGroup(None, 1, 100, 20, 0.25),  # no key: first
        SpendGroup("k1", 2, 200, 27, 0.25),  # the unpriced row counts, costs nothing
        SpendGroup("k2", 1, 100, 20, 1.5),
    ]
    assert [(g.group, g.requests) for g in await store.spend("team")] == [(None, 1), ("t1", 3)]
    assert [(g.group, g.cost_usd) for g in await store.spend("model")] == [
        ("claude", 1.5),
        ("gpt-test", 0.5),
    ]
    assert [g.group for g in await store.spend("provider")] == ["anthropic", "openai"]
    assert [(g.group, g.requests) for g in await store.spend("day")] == [
        ("2025-03-10", 3),
        ("2025-03-11", 1),
    ]


async def test_days_are_utc_days_whatever_zone_a_row_was_given_in(store: Store) -> None:
    evening_in_new_york = datetime(2025, 3, 10, 21, 0, tzinfo=timezone(timedelta(hours=-4)))
    await store.append_spend([spend_row("r1", time=evening_in_new_york)])
    assert [g.group for g in await store.spend("day")] == ["2025-03-11"]


async def test_a_window_includes_its_start_and_excludes_its_end(store: Store) -> None:
    await store.append_spend(
        [spend_row(f"r{hour}", time=MONDAY + timedelta(hours=hour)) for hour in range(4)]
    )
    window = await store.spend(
        "key", start=MONDAY + timedelta(hours=1), end=MONDAY + timedelta(hours=3)
    )
    assert [g.requests for g in window] == [2]
    assert [g.requests for g in await store.spend("key", start=MONDAY + timedelta(hours=3))] == [1]
    assert [g.requests for g in await store.spend("key", end=MONDAY)] == []


async def test_spent_sums_a_key_or_a_team_since_a_time(store: Store) -> None:
    await store.append_spend(
        [
            spend_row("old", time=MONDAY - timedelta(days=1), cost_usd=100.0),
            spend_row("r1", time=MONDAY),
            spend_row("r2", time=MONDAY + timedelta(hours=1), key_id="k2"),
            spend_row(
                "r3", time=MONDAY + timedelta(hours=2), cost_usd=None, cost_status="unpriced"
            ),
        ]
    )
    assert await store.spent("key", "k1", MONDAY) == 0.25
    assert await store.spent("team", "t1", MONDAY) == 0.5
    assert await store.spent("team", "t1", MONDAY - timedelta(days=7)) == 100.5
    assert await store.spent("key", "k-unknown", MONDAY) == 0.0


async def test_bad_groupings_scopes_and_naive_times_are_refused(store: Store) -> None:
    with pytest.raises(InvalidValueError, match="group_by"):
        await store.spend("user")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="scope"):
        await store.spent("model", "gpt", MONDAY)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="since"):
        await store.spent("key", "k1", datetime(2025, 3, 10))
    with pytest.raises(InvalidValueError, match="start"):
        await store.spend("key", start=datetime(2025, 3, 10))
