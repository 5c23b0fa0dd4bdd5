"""The spend ledger's writer: the request path hands it rows, the background batch
writer (polyroute.store.writer) writes them to the store. A batch sent twice counts
once: the store skips the rows it has (by time and request id)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from polyroute.store.contract import CostStatus, SpendRow, Store
from polyroute.store.writer import BatchWriter

Served = tuple[
    str, float, str | None, str | None, str, str, int, int, int, int, float | None, CostStatus
]
"""A :class:`SpendRow`'s fields with its time as Unix seconds (:meth:`LedgerWriter.served`)."""


class LedgerWriter(BatchWriter[SpendRow | Served]):
    """Queues :class:`SpendRow` s and writes them to ``store`` in the background.

    Use as ``async with LedgerWriter(store) as ledger:``, or call :meth:`start` and
    :meth:`aclose`. ``dropped`` counts rows that never reached the store: the queue
    was full, the writer closed, or the store refused their batch (a bad row: logged
    as ``ledger.refused``); ``written`` counts rows the store took. The options are
    :class:`~polyroute.store.writer.BatchWriter`'s.
    """

    def __init__(
        self,
        store: Store,
        *,
        batch: int = 500,
        interval_s: float = 1.0,
        max_queued: int = 100_000,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        super().__init__(
            self._append,
            name="ledger",
            batch=batch,
            interval_s=interval_s,
            max_queued=max_queued,
            backoff_s=backoff_s,
            backoff_max_s=backoff_max_s,
        )
        self.store = store

    def served(self, row: Served) -> None:
        """Queue a served request's row as its fields, its time in Unix seconds: the
        :class:`SpendRow` is made with its batch (a request's end pays only for the
        tuple). Its time stays what it was when queued, so a batch sent twice still
        counts once."""
        self.add(row)

    async def _append(self, items: Sequence[SpendRow | Served]) -> int:
        rows = [
            item
            if isinstance(item, SpendRow)
            else SpendRow(item[0], datetime.fromtimestamp(item[1], UTC), *item[2:])
            for item in items
        ]
        return await self.store.append_spend(rows)
