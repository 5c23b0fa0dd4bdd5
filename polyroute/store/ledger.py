"""The spend ledger's writer: the request path hands it rows, the background batch
writer (polyroute.store.writer) writes them to the store. A batch sent twice counts
once: the store skips the rows it has (by time and request id)."""

from __future__ import annotations

from polyroute.store.contract import SpendRow, Store
from polyroute.store.writer import BatchWriter


class LedgerWriter(BatchWriter[SpendRow]):
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
            store.append_spend,
            name="ledger",
            batch=batch,
            interval_s=interval_s,
            max_queued=max_queued,
            backoff_s=backoff_s,
            backoff_max_s=backoff_max_s,
        )
        self.store = store
