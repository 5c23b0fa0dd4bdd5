"""Hedged first chunks: when the first chunk is late, start the next candidate too
and keep whichever answers first.

The stream hands in two callables (pick the next candidate, open one up to its
first chunk) and gets back the winner; losers are cancelled, and one that got a
first chunk as well is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Generic, TypeVar

from polyroute.core.logging import EventLogger
from polyroute.router.config import HedgeConfig
from polyroute.router.context import Choice
from polyroute.router.stats import StatsBook

_Opened = TypeVar("_Opened")


@dataclass(frozen=True, slots=True)
class Hedge(Generic[_Opened]):
    """One request's hedging: ``next_choice()`` gives the next choice (candidate
    and mode) or None; ``open_one(choice)`` gives an opened attempt or None when it failed;
    ``close(opened)`` releases an opened attempt that lost."""

    config: HedgeConfig
    stats: StatsBook
    log: EventLogger
    next_choice: Callable[[], Coroutine[object, object, Choice | None]]
    open_one: Callable[[Choice], Coroutine[object, object, _Opened | None]]
    close: Callable[[_Opened], Coroutine[object, object, None]]

    async def open(self) -> _Opened | None:
        """The first choice to reach its first chunk, or None when all failed."""
        running: dict[asyncio.Task[_Opened | None], Choice] = {}
        latest: Choice | None = None
        launched_at = 0.0
        exhausted = False

        async def launch() -> bool:
            nonlocal latest, launched_at, exhausted
            choice = None if exhausted else await self.next_choice()
            if choice is None:
                exhausted = True
                return False
            latest, launched_at = choice, time.perf_counter()
            running[asyncio.create_task(self.open_one(choice))] = choice
            return True

        try:
            await launch()
            while running:
                delay = None
                if not exhausted and latest is not None and len(running) < self.config.max_parallel:
                    waited = time.perf_counter() - launched_at
                    delay = max(0.0, self._after_ms(latest) / 1000 - waited)
                done, _ = await asyncio.wait(
                    running, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    waited_ms = round((time.perf_counter() - launched_at) * 1000, 3)
                    if await launch() and latest is not None:
                        self.log.info("attempt.hedge", provider=latest.name, after_ms=waited_ms)
                    continue
                for task in done:
                    running.pop(task)
                    if (opened := task.result()) is not None:
                        await self._drop(running)
                        return opened
                if not running:
                    await launch()  # every attempt in flight failed: move on at once
            return None
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    def _after_ms(self, choice: Choice) -> float:
        if self.config.after_ms != "p95":
            return self.config.after_ms
        p95 = self.stats[choice.name].p95_ttft_ms()
        return self.config.p95_fallback_ms if p95 is None else p95

    async def _drop(self, running: dict[asyncio.Task[_Opened | None], Choice]) -> None:
        """Cancel the attempts that lost; close any that got a first chunk too."""
        tasks = list(running)
        running.clear()
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if result is not None and not isinstance(result, BaseException):
                await self.close(result)
