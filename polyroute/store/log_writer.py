"""The request log's writer and its retention: records queued on the request path and
written in batches in the background (the writer the spend ledger uses), records
older than the retention deleted in the background.

A record reaches the writer as the object the router made (anything with
``as_json()``: ``polyroute.RequestRecord``), so that turning it into its JSON shape
is the background task's work, not the request's. The writer is a
``polyroute.RequestObserver``: hand it to the router (``router.observe(writer)``).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any, Protocol

from polyroute.core.errors import describe_error
from polyroute.core.logging import get_logger
from polyroute.core.periods import utc_now
from polyroute.store.contract import Store, StoreError
from polyroute.store.request_log import PRUNE_BATCH
from polyroute.store.writer import BatchWriter

_log = get_logger()

PRUNE_EVERY_S = 3600.0
"""How often the retention runs (and once when it starts)."""


class Loggable(Protocol):
    """A record as the request path hands it over (``polyroute.RequestRecord``)."""

    def as_json(self) -> dict[str, Any]: ...


class RequestLogWriter(BatchWriter[Loggable]):
    """Queues request records and writes them to ``store``'s request log in the
    background (``request_log.*`` events; the options are
    :class:`~polyroute.store.writer.BatchWriter`'s). While the store is down, up to
    ``max_queued`` records wait (fewer than the ledger's rows: a record with its
    content can be large); beyond, they are counted in ``dropped``."""

    def __init__(
        self,
        store: Store,
        *,
        batch: int = 500,
        interval_s: float = 0.25,
        max_queued: int = 20_000,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        super().__init__(
            self._add,
            name="request_log",
            batch=batch,
            interval_s=interval_s,
            max_queued=max_queued,
            backoff_s=backoff_s,
            backoff_max_s=backoff_max_s,
        )
        self.store = store

    def request_ended(self, record: Loggable) -> None:
        """Queue ``record`` (a ``RequestObserver``: never waits, never raises)."""
        self.add(record)

    async def _add(self, records: list[Loggable]) -> int:
        return await self.store.add_requests([record.as_json() for record in records])


class Retention:
    """Deletes logged requests older than ``days`` from ``store``, every ``every_s``
    seconds in the background (first when it starts), in batches of
    :data:`PRUNE_BATCH`. A store that is down is tried again next time (logged as
    ``request_log.prune_failed``)."""

    def __init__(self, store: Store, days: float, *, every_s: float = PRUNE_EVERY_S) -> None:
        if days <= 0 or every_s <= 0:
            raise ValueError("days and every_s must be positive")
        self.store = store
        self.days = days
        self.pruned = 0
        """Records deleted since it started."""
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def start(self) -> None:
        """Start pruning on the running loop (idempotent)."""
        if self._task is None and not self._closing.is_set():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="polyroute-request-log-retention"
            )

    async def prune(self) -> int:
        """Delete what is older than the retention now; how many records. Raises
        :class:`StoreError` (:class:`StoreUnavailableError` when the store is down)."""
        before = utc_now() - timedelta(days=self.days)
        deleted = 0
        while True:
            count = await self.store.prune_requests(before, PRUNE_BATCH)
            deleted += count
            if count < PRUNE_BATCH or self._closing.is_set():
                break
        self.pruned += deleted
        if deleted:
            _log.info("request_log.pruned", records=deleted, before=before.isoformat())
        return deleted

    async def aclose(self) -> None:
        """Stop pruning (a prune under way is let finish its batch)."""
        self._closing.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._closing.is_set():
            try:
                await self.prune()
            except StoreError as error:
                _log.warning("request_log.prune_failed", **describe_error(error))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._every_s):
                    await self._closing.wait()
