"""Giving memory back after large answers.

A large answer (a long non-streamed completion, a big batch of embeddings) passes
through the gateway as a few buffers of its size. Measured with eight 8 MB answers at
once, three times over: the gateway's RSS went from 70 to 380 MB at its peak and stayed
at 320 MB. Three things held it, each undone here (on glibc; elsewhere only the first
two):

- aiohttp keeps a kept-alive connection's last answer, body included, until its next
  one: a large body is sent by :meth:`MemoryReturn.answered` and then dropped;
- what a request leaves in reference cycles (its stream, generators, exceptions)
  waits for the collector's oldest generation, which an idle process may not reach
  for long: a trim collects first (about 14 ms with 100,000 live objects);
- glibc keeps the heap those buffers grew, and raises its mmap threshold to the
  largest block freed, after which such blocks come from the heap too: the
  threshold is fixed at start (:func:`tune_allocator`) and ``malloc_trim(0)`` gives
  the free pages back (under a millisecond).

A trim runs :data:`TRIM_AFTER_S` after a large answer, at most every
:data:`TRIM_EVERY_S` seconds, and once more after the answers stop. With it, the same
load peaks at 230 MB and the RSS is back at 71 MB two seconds after the last answer.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import time
from typing import Any

from aiohttp import web

LARGE_BYTES = 1 << 20
"""An answer this large is followed by a trim."""
TRIM_EVERY_S = 2.0
TRIM_AFTER_S = 0.5
"""A trim waits this long after the answer that asked for it: its buffers (and those
of the answers that ended with it) are freed by then."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 256 * 1024
"""Blocks this large or larger are mapped on their own, and unmapped when freed."""


def _glibc() -> Any | None:
    """The C library when it is glibc (it has ``malloc_trim``), else ``None``."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _glibc()


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold (for the process); whether it could be."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 4 * _MMAP_THRESHOLD)
    )


class MemoryReturn:
    """Trims the allocator's heaps soon after a large answer ended (:meth:`answered`)."""

    def __init__(self) -> None:
        self.trims = 0
        self._pending = False
        self._last = 0.0
        self._since = 0
        """Large answers ended since the last trim."""

    async def answered(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """``response`` is the whole answer to ``request`` (a stream has been written
        already). A large one is sent here, rather than after the handler, so that
        its body is freed before the trim it asks for."""
        size = response.content_length or response.body_length
        if size < LARGE_BYTES or _LIBC is None:
            return
        if not response.prepared:
            await response.prepare(request)
            await response.write_eof()
        if isinstance(response, web.Response):
            # aiohttp keeps a kept-alive connection's last answer until its next one.
            response.body = None
        self._since += 1
        if not self._pending:
            self._plan(max(TRIM_AFTER_S, self._last + TRIM_EVERY_S - time.monotonic()))

    def _plan(self, wait: float) -> None:
        self._pending = True
        asyncio.get_running_loop().call_later(wait, self._trim)

    def _trim(self) -> None:
        self._pending = False
        self._last = time.monotonic()
        self.trims += 1
        if self._since:  # one more once they have settled: the last trim follows a lull
            self._since = 0
            self._plan(TRIM_EVERY_S)
        # What the answers left in reference cycles (their streams, generators and
        # exceptions) waits for the collector's oldest generation, which an idle
        # gateway may not reach for long: collected first, it can be given back.
        gc.collect()
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
