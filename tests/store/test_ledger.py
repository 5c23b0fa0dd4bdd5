"""The ledger writer against real stores: batches, idempotency, outages and drops.

Waits are on what the store saw (``Recording``) or on ``flush()``, never on the clock.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest

from polyroute.store import LedgerWriter, SpendRow, Store, StoreUnavailableError
from polyroute.store.postgres import PostgresStore
from tests.server.helpers import free_port
from tests.store.conftest import Database, spend_row

LONG = 3600.0  # an interval that never elapses in a test: only batches or flush() write


class Recording:
    """The real store, with what each ``append_spend`` did announced to waiters."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.batches: list[int] = []
        self.failures = 0
        self._changed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def append_spend(self, rows: Sequence[SpendRow]) -> int:
        try:
            added = await self.store.append_spend(rows)
        except StoreUnavailableError:
            self.failures += 1
            raise
        finally:
            self._changed.set()
        self.batches.append(len(rows))
        return added

    async def until(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def requests(store: Store) -> int:
    return sum(group.requests for group in await store.spend("key"))


async def test_full_batches_are_written_in_the_background(store: Store) -> None:
    recording = Recording(store)
    async with LedgerWriter(recording, batch=3, interval_s=LONG) as ledger:
        for n in range(7):
            ledger.add(spend_row(f"r{n}"))
        await recording.until(lambda: sum(recording.batches) >= 6)
        assert recording.batches == [3, 3]
        assert ledger.queued == 1
        await ledger.flush()
    assert recording.batches == [3, 3, 1]
    assert (ledger.written, ledger.dropped) == (7, 0)
    assert await requests(store) == 7


async def test_a_partial_batch_is_written_after_the_interval(store: Store) -> None:
    recording = Recording(store)
    async with LedgerWriter(recording, batch=100, interval_s=0.02) as ledger:
        ledger.add(spend_row("r1"))
        await recording.until(lambda: recording.batches == [1])
    assert await requests(store) == 1


async def test_the_same_request_id_counts_once(store: Store) -> None:
    async with LedgerWriter(store, batch=10, interval_s=LONG) as ledger:
        ledger.add(spend_row("r1"))
        ledger.add(spend_row("r1"))  # within one batch
        await ledger.flush()
        ledger.add(spend_row("r1"))  # in a later batch: a retry after a lost answer
        ledger.add(spend_row("r2"))
    assert ledger.written == 4
    assert await requests(store) == 2
    assert await store.spent("key", "k1", spend_row("r").time) == 0.5


async def test_served_rows_are_made_with_their_batch_at_the_time_they_were_queued(
    store: Store,
) -> None:
    noon = spend_row("r").time
    fields = (noon.timestamp(), "k1", "t1", "gpt-test", "openai", 100, 10, 20, 5, 0.25, "exact")
    async with LedgerWriter(store, batch=10, interval_s=LONG) as ledger:
        ledger.served(("s1", *fields))
        ledger.add(spend_row("r1"))  # rows made before queueing go with them
        await ledger.flush()
        ledger.served(("s1", *fields))  # sent again (a lost answer): the same row
        await ledger.flush()
    assert ledger.written == 3
    assert await requests(store) == 2
    # Both at noon exactly: the served row's time is the one it was queued with.
    assert await store.spent("key", "k1", noon) == 0.5
    assert await store.spent("key", "k1", noon + timedelta(microseconds=1)) == 0


async def test_rows_wait_out_an_outage_and_beyond_max_queued_are_dropped(
    database: Database, store: Store
) -> None:
    ledger = LedgerWriter(store, batch=100, interval_s=LONG, max_queued=5)
    async with database.outage():
        for n in range(8):
            ledger.add(spend_row(f"r{n}"))
        assert (ledger.queued, ledger.dropped) == (5, 3)
        with pytest.raises(StoreUnavailableError):
            await ledger.flush()
        assert (ledger.queued, ledger.written) == (5, 0)  # kept for later
    await ledger.flush()
    assert (ledger.queued, ledger.written, ledger.dropped) == (0, 5, 3)
    assert [group.requests for group in await store.spend("key")] == [5]
    await ledger.aclose()


async def test_the_background_writer_retries_until_the_store_is_back(
    database: Database, store: Store
) -> None:
    recording = Recording(store)
    ledger = LedgerWriter(recording, batch=2, interval_s=LONG, backoff_s=0.01, backoff_max_s=0.05)
    ledger.start()
    async with database.outage():
        ledger.add(spend_row("r1"))
        ledger.add(spend_row("r2"))
        await recording.until(lambda: recording.failures >= 2)  # retried, with backoff
        assert ledger.queued == 2
    await recording.until(lambda: recording.batches == [2])
    assert (ledger.queued, ledger.written) == (0, 2)
    await ledger.aclose()
    assert await requests(store) == 2


async def test_closing_flushes_and_later_rows_are_dropped(store: Store) -> None:
    ledger = LedgerWriter(store, batch=100, interval_s=LONG)
    ledger.start()
    ledger.add(spend_row("r1"))
    await ledger.aclose()
    ledger.add(spend_row("r2"))
    assert (ledger.written, ledger.dropped) == (1, 1)
    assert await requests(store) == 1


async def test_a_batch_the_store_refuses_is_dropped_and_the_next_goes_through(
    store: Store,
) -> None:
    async with LedgerWriter(store, batch=2, interval_s=LONG) as ledger:
        ledger.add(spend_row("r1"))
        ledger.add(spend_row("r2", model=None))  # the database refuses it: NOT NULL
        ledger.add(spend_row("r3"))
        await ledger.flush()
    assert (ledger.written, ledger.dropped) == (1, 2)
    assert await requests(store) == 1


async def test_closing_while_the_store_is_down_counts_the_queue_as_lost(
    json_log: io.StringIO,
) -> None:
    password = "ledger-dsn-secret"
    store = PostgresStore(f"postgresql://polyroute:{password}@127.0.0.1:{free_port()}/x")
    ledger = LedgerWriter(store, batch=100, interval_s=LONG)
    ledger.start()
    for n in range(3):
        ledger.add(spend_row(f"r{n}"))
    await ledger.aclose()
    await store.aclose()
    assert (ledger.written, ledger.dropped, ledger.queued) == (0, 3, 0)
    log = json_log.getvalue()
    assert '"ledger.lost"' in log
    assert password not in log
