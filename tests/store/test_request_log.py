"""The request log in both stores (issue 26, part 1): records kept in their one JSON
shape, read newest first through filters and a keyset cursor, pruned by age; and its
background writer through an outage."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from polyroute import AttemptRecord, RequestRecord
from polyroute.router.observe import RECORD_STATUSES, TokenCounts
from polyroute.store import (
    InvalidValueError,
    NotFoundError,
    RequestLogWriter,
    RequestQuery,
    Retention,
    Store,
)
from polyroute.store.request_log import REQUEST_STATUSES, encode_cursor
from tests.store.conftest import Database

NOON = datetime(2025, 3, 10, 12, 0, 0, 123456, tzinfo=UTC)
LONG = 3600.0  # an interval that never elapses in a test: only batches or flush() write
RELAY = (
    AttemptRecord("dark", "gpt-4o", "failed", "UpstreamConnectionError",
                  "dark closed the connection after 812 characters", None, 0.0, 95.5, 1002.25,
                  812, 0),
    AttemptRecord("backup", "gpt-4o-2024", "ok", None, None, None, 1003.0, 80.0, 2100.0, 400,
                  812),
)  # fmt: skip


def record(id: str, time: datetime = NOON, **fields: Any) -> RequestRecord:
    """A switched chat request of key ``ci``, unless ``fields`` say otherwise."""
    values: dict[str, Any] = {
        "id": id, "time": time, "endpoint": "chat", "key": "ci", "team": "search",
        "model": "gpt-4o", "resolved_model": "gpt-4o-2024", "provider": "backup",
        "status": "switched", "finish_reason": "stop", "ttft_ms": 95.5,
        "duration_ms": 3103.25, "usage": TokenCounts(120, 20, 303, 7), "cost_usd": 0.00125,
        "cost_status": "estimated", "cache": None, "error_type": None, "error": None,
        "attempts": RELAY,
    }  # fmt: skip
    return RequestRecord(**{**values, **fields})


async def ids(store: Store, **query: Any) -> list[str]:
    page = await store.list_requests(RequestQuery(**query))
    return [item["id"] for item in page.data]


async def test_a_record_reads_back_in_its_one_json_shape(store: Store) -> None:
    content = {"messages": [{"role": "user", "content": "Hi \u2603"}],
               "answer": {"role": "assistant", "content": "Hello"}}  # fmt: skip
    written = [record("r1"), record("r2", NOON + timedelta(seconds=1), content=content)]
    assert await store.add_requests([r.as_json() for r in written]) == 2
    for item in written:
        read = await store.get_request(item.id)
        assert read == item.as_json()
        assert list(read) == list(item.as_json())  # the shape's order, too
        assert [list(a) for a in read["attempts"]] == [list(a.as_json()) for a in RELAY]
        assert RequestRecord.from_json(read) == item
    assert (await store.get_request("r1"))["time"] == "2025-03-10T12:00:00.123456Z"


async def test_a_batch_sent_twice_is_kept_once_and_a_reused_id_reads_its_newest(
    store: Store,
) -> None:
    first = record("reused")
    assert await store.add_requests([first.as_json()] * 2) == 1
    assert await store.add_requests([first.as_json()]) == 0
    later = record("reused", NOON + timedelta(minutes=1), status="failed", provider=None)
    assert await store.add_requests([later.as_json()]) == 1
    assert (await store.get_request("reused"))["status"] == "failed"
    assert await ids(store) == ["reused", "reused"]


async def test_an_unknown_id_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError) as caught:
        await store.get_request("nope")
    assert (caught.value.kind, caught.value.id) == ("request", "nope")


async def test_records_are_listed_newest_first_and_filtered(store: Store) -> None:
    def at(n: int) -> datetime:
        return NOON + timedelta(minutes=n)

    await store.add_requests(
        [
            record("a", at(0)).as_json(),
            record("b", at(1), key="ops", status="complete", provider="dark").as_json(),
            record("c", at(2), model="cheap", resolved_model="gpt-4o-mini").as_json(),
            record("d", at(3), key=None, team=None, status="failed").as_json(),
        ]
    )
    assert await ids(store) == ["d", "c", "b", "a"]
    assert await ids(store, key="ci") == ["c", "a"]
    assert await ids(store, provider="dark") == ["b"]
    assert await ids(store, status="failed") == ["d"]
    assert await ids(store, status="switched") == ["c", "a"]
    assert await ids(store, status="complete") == ["b"]
    assert await ids(store, model="gpt-4o-mini") == ["c"]  # the resolved model
    assert await ids(store, model="cheap") == ["c"]  # or the requested one
    assert await ids(store, model="gpt-4o") == ["d", "b", "a"]
    assert await ids(store, since=at(2)) == ["d", "c"]
    assert await ids(store, key="ci", since=at(1)) == ["c"]


async def test_pages_follow_the_cursor_without_a_gap_or_a_repeat(store: Store) -> None:
    # Pairs ending in the same microsecond: the cursor orders them by id.
    records = [record(f"r{n}", NOON + timedelta(seconds=n // 2)) for n in range(7)]
    await store.add_requests([r.as_json() for r in records])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list_requests(RequestQuery(limit=3, cursor=cursor))
        seen += [item["id"] for item in page.data]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
        # Written meanwhile, newer than every page: it does not shift the next one.
        await store.add_requests([record(f"new{pages}", NOON + timedelta(hours=1)).as_json()])
    assert seen == ["r6", "r5", "r4", "r3", "r2", "r1", "r0"]
    assert pages == 3
    exact = await store.list_requests(RequestQuery(limit=2, key="none-such"))
    assert (exact.data, exact.next_cursor) == ([], None)


def test_the_store_takes_every_status_the_router_names() -> None:
    # Two floors, one list: the store may not import the router.
    assert REQUEST_STATUSES == RECORD_STATUSES


def test_a_bad_query_is_refused_before_the_database() -> None:
    with pytest.raises(InvalidValueError, match="status"):
        RequestQuery(status="ok")
    with pytest.raises(InvalidValueError, match="limit"):
        RequestQuery(limit=0)
    with pytest.raises(InvalidValueError, match="limit"):
        RequestQuery(limit=1001)
    with pytest.raises(InvalidValueError, match="cursor"):
        RequestQuery(cursor="not-a-cursor")
    with pytest.raises(InvalidValueError, match="since"):
        RequestQuery(since=datetime(2025, 1, 1))
    RequestQuery(cursor=encode_cursor(NOON, "r1"))


async def test_a_mapping_that_is_not_a_record_is_refused(store: Store) -> None:
    shape = record("r1").as_json()
    with pytest.raises(InvalidValueError, match="status"):
        await store.add_requests([{**shape, "status": "done"}])
    with pytest.raises(InvalidValueError, match="record"):
        await store.add_requests([{key: v for key, v in shape.items() if key != "time"}])
    assert await ids(store) == []


async def test_pruning_deletes_what_is_older_in_batches(store: Store) -> None:
    old = [record(f"old{n}", NOON - timedelta(days=40, seconds=n)) for n in range(5)]
    await store.add_requests([r.as_json() for r in [*old, record("new")]])
    assert await store.prune_requests(NOON - timedelta(days=30), limit=2) == 2
    assert await store.prune_requests(NOON - timedelta(days=30), limit=10) == 3
    assert await store.prune_requests(NOON - timedelta(days=30), limit=10) == 0
    assert await ids(store) == ["new"]


class Pruning:
    """The real store, with each prune announced."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0
        self.pruned = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def prune_requests(self, before: datetime, limit: int = 5000) -> int:
        self.calls += 1
        try:
            return int(await self.store.prune_requests(before, limit))
        finally:
            self.pruned.set()


async def test_the_retention_prunes_in_the_background_from_its_start(store: Store) -> None:
    now = datetime.now(UTC)
    await store.add_requests(
        [record("old", now - timedelta(days=8)).as_json(), record("recent", now).as_json()]
    )
    pruning = Pruning(store)
    retention = Retention(pruning, days=7)  # type: ignore[arg-type]
    retention.start()
    async with asyncio.timeout(10):
        await pruning.pruned.wait()
    await retention.aclose()
    assert retention.pruned == 1
    assert await ids(store) == ["recent"]


class Recording:
    """The real store, with what each ``add_requests`` did announced to waiters."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.batches: list[int] = []
        self.failures = 0
        self._changed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def add_requests(self, records: Sequence[Any]) -> int:
        try:
            added = int(await self.store.add_requests(records))
        except Exception:
            self.failures += 1
            raise
        finally:
            self._changed.set()
        self.batches.append(len(records))
        return added

    async def until(self, condition: Any, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def test_the_writer_waits_out_an_outage_counts_what_it_drops_and_catches_up(
    database: Database, store: Store
) -> None:
    recording = Recording(store)
    writer = RequestLogWriter(
        recording,  # type: ignore[arg-type]
        batch=2,
        interval_s=LONG,
        max_queued=4,
        backoff_s=0.01,
        backoff_max_s=0.05,
    )
    writer.start()
    async with database.outage():
        for n in range(6):
            writer.request_ended(record(f"r{n}", NOON + timedelta(seconds=n)))
        await recording.until(lambda: recording.failures >= 2)  # retried, with backoff
        assert (writer.queued, writer.dropped, writer.written) == (4, 2, 0)
    await recording.until(lambda: sum(recording.batches) == 4)
    await writer.aclose()
    assert (writer.queued, writer.written, writer.dropped) == (0, 4, 2)
    assert await ids(store) == ["r3", "r2", "r1", "r0"]


async def test_the_writer_turns_records_into_their_shape_in_the_background(store: Store) -> None:
    class Counted:
        made = 0

        def __init__(self, inner: RequestRecord) -> None:
            self.inner = inner

        def as_json(self) -> dict[str, Any]:
            Counted.made += 1
            return self.inner.as_json()

    async with RequestLogWriter(store, batch=10, interval_s=LONG) as writer:
        writer.request_ended(Counted(record("r1")))
        writer.request_ended(Counted(replace(record("r2"), status="complete")))
        assert Counted.made == 0  # nothing of it on the request path
        await writer.flush()
        assert Counted.made == 2
    assert await ids(store) == ["r2", "r1"]  # one time: newest first by id
