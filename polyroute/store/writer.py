"""The background batch writer behind the spend ledger and the request log: the request
path hands it items, a background task writes them to the store in batches.

Nothing on the request path waits on the database (STYLE.md, "Money and records"):
:meth:`BatchWriter.add` appends to an in-memory queue and returns. The queue is
written every ``interval_s``, or as soon as ``batch`` items wait. While the store is
down, items stay queued (up to ``max_queued``; beyond that they are counted in
``dropped``, not kept) and the writer retries with exponential backoff. What a batch
sent twice (written, but the answer lost) does is the store's to say: both the ledger
and the request log skip what they already have.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Generic, Self, TypeVar

from polyroute.core.errors import describe_error
from polyroute.core.logging import get_logger
from polyroute.store.contract import StoreError, StoreUnavailableError

_log = get_logger()
T = TypeVar("T")


class BatchWriter(Generic[T]):
    """Queues items and hands them to ``write`` in batches, in the background.

    Use as ``async with`` it, or call :meth:`start` and :meth:`aclose`. ``write`` takes
    a batch (oldest first) and raises :class:`StoreUnavailableError` when the store is
    out of reach (the batch stays queued) or another :class:`StoreError` when it
    refuses the batch (dropped: it would be refused again). ``name`` names the writer's
    events (``<name>.degraded``, ``.restored``, ``.dropping``, ``.refused``, ``.lost``).
    ``dropped`` counts items that never reached the store: the queue was full, the
    writer closed, or the store refused their batch; ``written`` counts those it took.
    """

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[object]],
        *,
        name: str,
        batch: int = 500,
        interval_s: float = 1.0,
        max_queued: int = 100_000,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        if batch < 1 or max_queued < 1 or interval_s <= 0 or backoff_s <= 0:
            raise ValueError("batch and max_queued must be at least 1, intervals positive")
        self.name = name
        self.dropped = 0
        self.written = 0
        self._write = write
        self._batch = batch
        self._interval_s = interval_s
        self._max_queued = max_queued
        self._backoff_s = backoff_s
        self._backoff_max_s = max(backoff_max_s, backoff_s)
        self._queue: deque[T] = deque()
        self._wake = asyncio.Event()  # a full batch waits, or closing
        self._closing = asyncio.Event()
        self._writing = asyncio.Lock()  # one writer at a time: the background or flush()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._degraded = False
        self._full = False

    @property
    def queued(self) -> int:
        """Items waiting to be written."""
        return len(self._queue)

    def add(self, item: T) -> None:
        """Queue ``item``; never blocks, never raises (a full queue counts a drop)."""
        if self._closed or len(self._queue) >= self._max_queued:
            self.dropped += 1
            if not self._full:  # once per episode: the hot path must not log per item
                self._full = True
                _log.warning(f"{self.name}.dropping", queued=len(self._queue), closed=self._closed)
            return
        self._queue.append(item)
        if len(self._queue) >= self._batch:
            self._wake.set()

    def start(self) -> None:
        """Start the background writer on the running loop (idempotent)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"polyroute-{self.name}"
            )

    async def flush(self) -> None:
        """Write the items queued now, in batches.

        Raises :class:`StoreUnavailableError` when the store is down: the items not
        written stay queued, for the background writer or the next ``flush``.
        """
        async with self._writing:
            remaining = len(self._queue)
            while remaining > 0 and self._queue:
                remaining -= await self._write_batch()
            if len(self._queue) < self._max_queued:
                self._full = False

    async def aclose(self) -> None:
        """Stop the background writer and flush. Items the store cannot take now are
        counted in ``dropped`` (and logged as ``<name>.lost``): closing never waits
        for a store to come back."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        try:
            await self.flush()
        except StoreUnavailableError as exc:
            lost = len(self._queue)
            self._queue.clear()
            self.dropped += lost
            _log.warning(f"{self.name}.lost", items=lost, **describe_error(exc))

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self) -> None:
        backoff = 0.0
        while not self._closing.is_set():
            if backoff:  # only closing ends a backoff early: full batches must wait too
                await _wait(self._closing, backoff)
            else:
                await _wait(self._wake, self._interval_s)
            self._wake.clear()
            if self._closing.is_set():
                return  # aclose() flushes what is left
            try:
                await self.flush()
            except StoreUnavailableError as exc:
                backoff = min(max(backoff * 2, self._backoff_s), self._backoff_max_s)
                if not self._degraded:
                    self._degraded = True
                    _log.warning(
                        f"{self.name}.degraded", queued=len(self._queue), **describe_error(exc)
                    )
            else:
                backoff = 0.0
                if self._degraded:
                    self._degraded = False
                    _log.info(f"{self.name}.restored", written=self.written, dropped=self.dropped)

    async def _write_batch(self) -> int:
        """Write the oldest ``batch`` items (kept queued until the store has them); how
        many items left the queue."""
        items = list(itertools.islice(self._queue, self._batch))
        try:
            await self._write(items)
        except StoreUnavailableError:
            raise
        except StoreError as exc:
            # Refused, not unreachable: the same batch would be refused forever, and
            # block every item behind it.
            self.dropped += len(items)
            _log.warning(f"{self.name}.refused", items=len(items), **describe_error(exc))
        else:
            self.written += len(items)
        for _ in items:
            self._queue.popleft()  # add() only appends: the oldest are still these
        return len(items)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set, or ``seconds`` have passed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
