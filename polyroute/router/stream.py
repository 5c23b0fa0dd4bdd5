"""RouterStream: one routed answer, from the first candidate to the last relay.

One request walks the model chain (the resolved model, then its fallbacks) and, for
each model, the candidate entries in order, retrying retryable errors on an entry
before moving on. Until the first chunk, failures are invisible to the caller. After
it, a failure hands the answer to the next candidate (``on_midstream_failure``):
``continue`` asks it to carry on from the partial text, dropping what it repeats at
the seam; ``restart`` yields a :class:`StreamRestarted` marker and its whole answer;
``raise`` raises the upstream's error with the partial text kept on the stream.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Iterator
from typing import TYPE_CHECKING, Any, Literal

from tenacity import RetryCallState

from polyroute.core.attempts import Attempt
from polyroute.core.errors import (
    AllProvidersFailed,
    AuthenticationError,
    InvalidRequestError,
    PolyrouteError,
    UpstreamError,
    UpstreamStatusError,
    describe_error,
)
from polyroute.core.logging import EventLogger, get_logger
from polyroute.core.messages import Message
from polyroute.router.config import HedgeConfig
from polyroute.router.policy import Candidate
from polyroute.router.relay import Seam, StreamRestarted

if TYPE_CHECKING:
    from polyroute.router.router import Router

_log = get_logger()
# Request ids: a random per-process prefix and a counter, unique without uuid4's
# 4.5 us (measured) on every request.
_ID_PREFIX = secrets.token_hex(6)
_request_numbers = itertools.count(1)

Mode = Literal["fresh", "continue", "restart"]
Status = Literal[
    "pending", "streaming", "complete", "switched", "restarted", "truncated", "failed", "cancelled"
]
Opened = tuple[AsyncGenerator[str, None], str | None, Attempt]


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def counts_against_health(error: BaseException) -> bool:
    """Whether a failure says something about the provider rather than the request.

    A 400 or 413 answer would come from any provider for the same request, so it
    must not cool the entry down for everybody else; refused credentials do.
    """
    if isinstance(error, AuthenticationError):
        return True
    if isinstance(error, UpstreamStatusError):
        return error.retryable
    return isinstance(error, UpstreamError)


def _add_usage(total: dict[str, Any], usage: dict[str, Any]) -> None:
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            _add_usage(total.setdefault(key, {}), value)


class _CandidateQueue:
    """Candidates in order; those skipped because they cannot continue an answer are
    kept aside, for a restart if no candidate that can continue remains."""

    def __init__(self, walk: Iterator[Candidate]) -> None:
        self._walk = walk
        self._aside: deque[Candidate] = deque()

    def next_any(self) -> Candidate | None:
        if self._aside:
            return self._aside.popleft()
        return next(self._walk, None)

    def next_continuing(self, reasons: list[str]) -> Candidate | None:
        for candidate in self._walk:
            if candidate.entry.provider.supports_continuation:
                return candidate
            reasons.append(f"{candidate.name} ({candidate.model}): cannot continue an answer")
            self._aside.append(candidate)
        return None


class RouterStream:
    """One routed answer: iterate it for text, read what happened from its fields.

    - ``provider``, ``model``: the entry that served the (last part of the) answer and
      the upstream model name (``None`` until the first chunk);
    - ``attempts``: every try in order (:class:`polyroute.Attempt`), relays included;
    - ``text``: the text delivered so far (the partial text after a failure);
    - ``status``: ``complete``; ``switched`` (relayed; ``switches`` holds the character
      offset of each hand-over); ``restarted``; ``truncated`` (a failure after text was
      raised); ``failed`` (no text); ``cancelled``;
    - ``finish_reason`` (of the last provider) and ``usage`` (summed over attempts), as
      upstreams reported them, or ``None``.

    Iterate it once. Leaving the loop early (``break``), cancelling the task, or
    ``await stream.aclose()`` closes the upstream response at once; ``async with``
    closes it on exit.
    """

    def __init__(
        self, router: Router, requested: str, messages: list[Message], params: dict[str, Any]
    ) -> None:
        self.request_id = f"{_ID_PREFIX}{next(_request_numbers):08x}"
        self.requested_model = requested
        self.provider: str | None = None
        self.model: str | None = None
        self.attempts: list[Attempt] = []
        self.status: Status = "pending"
        self.switches: list[int] = []
        self._router = router
        self._chain = router.policy.model_chain(requested)
        self._settings = router.route_settings(self._chain[0])
        self._messages = messages
        self._params = params
        self._parts: list[str] = []
        self._previous: Candidate | None = None
        # `async for` gets the generator itself and the stream keeps only a weak
        # reference: after a `break` nothing holds it, so it is finalized (and the
        # upstream closed) at once instead of when the stream object is dropped.
        self._generator: weakref.ref[AsyncGenerator[str, None]] | None = None
        self._held: AsyncGenerator[str, None] | None = None

    @property
    def text(self) -> str:
        """All text delivered so far."""
        return "".join(self._parts)

    @property
    def finish_reason(self) -> str | None:
        """Why the serving upstream stopped (``"stop"``, ``"length"``...), when it said."""
        serving = self._serving_attempt()
        return serving.report.finish_reason if serving else None

    @property
    def usage(self) -> dict[str, Any] | None:
        """Token usage summed over every attempt that reported some."""
        reported = [a.report.usage for a in self.attempts if a.report.usage]
        if not reported:
            return None
        total: dict[str, Any] = {}
        for usage in reported:
            _add_usage(total, usage)
        return total

    def _serving_attempt(self) -> Attempt | None:
        if self.provider is None:
            return None
        return next((a for a in reversed(self.attempts) if a.provider == self.provider), None)

    def __repr__(self) -> str:
        return (
            f"<RouterStream {self.request_id[:8]} model={self.requested_model!r} "
            f"provider={self.provider!r} status={self.status} attempts={len(self.attempts)}>"
        )

    def __aiter__(self) -> AsyncGenerator[str, None]:
        if self._held is not None:
            return self._held
        if self._generator is not None:
            raise RuntimeError("a RouterStream can be iterated only once")
        generator = self._route()
        self._generator = weakref.ref(generator)
        return generator

    async def __anext__(self) -> str:
        if self._held is None:
            self._held = self.__aiter__()
        return await anext(self._held)

    async def aclose(self) -> None:
        """Stop the stream and close the upstream response. Safe to call twice."""
        generator = self._held or (self._generator() if self._generator else None)
        if generator is not None:
            await generator.aclose()

    async def __aenter__(self) -> RouterStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # The routing loop -----------------------------------------------------------

    async def _route(self) -> AsyncGenerator[str, None]:
        router = self._router
        log = _log.bind(request_id=self.request_id)
        started = time.perf_counter()
        candidates, excluded = router.policy.candidates(
            self._chain[0], router.health, router.stats, self._settings.order
        )
        log.info(
            "route.start",
            requested_model=self.requested_model,
            model=self._chain[0],
            fallbacks=self._chain[1:],
            candidates=[candidate.name for candidate in candidates],
        )
        reasons: list[str] = []
        queue = _CandidateQueue(self._walk(candidates, excluded, reasons))
        failure: PolyrouteError | None = None
        failed_at = 0.0
        failed_provider = ""
        mode: Mode = "fresh"
        self.status = "streaming"
        try:
            while True:
                if failure is not None:
                    mode = "restart"
                    if self._settings.on_midstream_failure == "continue":
                        mode = "continue"
                opened = await self._open_next(queue, mode, reasons, log)
                if opened is None:
                    break
                generator, first, attempt, candidate, mode = opened
                self.provider, self.model = candidate.name, candidate.upstream_model
                offset = sum(map(len, self._parts))
                seam: Seam | None = None
                if failure is not None:
                    self.switches.append(offset)
                    log.info(
                        "route.relay",
                        from_provider=failed_provider,
                        to_provider=candidate.name,
                        mode=mode,
                        chars=offset,
                        gap_ms=_ms(failed_at),
                    )
                    if mode == "continue":
                        seam = Seam(self.text)
                    else:
                        yield StreamRestarted(discarded=offset, provider=candidate.name)
                elif first is not None:
                    log.info(
                        "stream.first_chunk",
                        provider=candidate.name,
                        model=candidate.upstream_model,
                        ttft_ms=attempt.ttft_ms,
                    )
                try:
                    text = first
                    if seam is not None:
                        # Hold the continuation back only until the seam is settled.
                        while text is not None:
                            if kept := seam.feed(text):
                                self._parts.append(kept)
                                yield kept
                            if seam.settled:
                                break
                            text = await anext(generator, None)
                        else:
                            if kept := seam.flush():
                                self._parts.append(kept)
                                yield kept
                    elif text is not None:
                        self._parts.append(text)
                        yield text
                    if text is not None:
                        async for text in generator:
                            self._parts.append(text)
                            yield text
                except PolyrouteError as error:
                    attempt.chars = sum(map(len, self._parts)) - offset
                    self._fail(attempt, candidate, error, log)
                    if not isinstance(error, UpstreamError) or not self._may_relay():
                        self._give_up(error, log, started)
                        raise
                    failure, failed_provider = error, candidate.name
                    failed_at = time.perf_counter()
                    continue
                finally:
                    await generator.aclose()
                attempt.chars = sum(map(len, self._parts)) - offset
                self._succeed(attempt, candidate, log, started)
                self.status = "complete"
                if failure is not None:
                    self.status = "switched" if mode == "continue" else "restarted"
                return
        except (GeneratorExit, asyncio.CancelledError):
            self._cancel(log, started)
            raise
        if failure is not None:
            self._give_up(failure, log, started)
            raise failure
        self.status = "failed"
        exhausted = AllProvidersFailed(self.requested_model, self.attempts, reasons)
        log.warning(
            "route.failed",
            model=self.requested_model,
            attempts=len(self.attempts),
            reasons=reasons,
            duration_ms=_ms(started),
            error_type="AllProvidersFailed",
        )
        raise exhausted

    def _may_relay(self) -> bool:
        settings = self._settings
        return settings.on_midstream_failure != "raise" and len(self.switches) < settings.max_relays

    def _give_up(self, error: PolyrouteError, log: EventLogger, started: float) -> None:
        self.status = "truncated" if self._parts else "failed"
        log.warning(
            "route.failed",
            model=self.requested_model,
            attempts=len(self.attempts),
            chars=sum(map(len, self._parts)),
            duration_ms=_ms(started),
            **describe_error(error),
        )

    def _walk(
        self, candidates: list[Candidate], excluded: list[str], reasons: list[str]
    ) -> Iterator[Candidate]:
        """Candidates across the model chain, in order; the first model's ``candidates``
        and ``excluded`` are given, the rest computed when reached. Appends to ``reasons``
        why each excluded entry was excluded."""
        router = self._router
        for index, model in enumerate(self._chain):
            if index:
                candidates, excluded = router.policy.candidates(
                    model, router.health, router.stats, self._settings.order
                )
            reasons += excluded
            yield from candidates

    def _next_candidate(
        self, queue: _CandidateQueue, mode: Mode, reasons: list[str], log: EventLogger
    ) -> tuple[Candidate, Mode] | None:
        """The next candidate to try and the mode to try it in; ``continue`` falls back to
        ``restart`` when no candidate that can continue remains, if configured so."""
        health = self._router.health
        while True:
            if mode == "continue":
                candidate = queue.next_continuing(reasons)
                if candidate is None and self._settings.continuation_fallback == "restart":
                    mode = "restart"
                    continue
            else:
                candidate = queue.next_any()
            if candidate is None:
                return None
            if not health.admit(candidate.name):
                reasons.append(f"{candidate.name} ({candidate.model}): cooling down")
                continue
            if self._previous is not None:
                log.info(
                    "route.fallback",
                    from_provider=self._previous.name,
                    from_model=self._previous.model,
                    to_provider=candidate.name,
                    to_model=candidate.model,
                )
            self._previous = candidate
            return candidate, mode

    async def _open_next(
        self, queue: _CandidateQueue, mode: Mode, reasons: list[str], log: EventLogger
    ) -> tuple[AsyncGenerator[str, None], str | None, Attempt, Candidate, Mode] | None:
        """Open the next candidate that gets to a first chunk (or to the end of an empty
        answer), hedging when configured; ``None`` when every candidate failed."""
        if self._settings.hedge is not None:
            return await self._open_hedged(queue, mode, self._settings.hedge, reasons, log)
        while (choice := self._next_candidate(queue, mode, reasons, log)) is not None:
            candidate, mode = choice
            opened = await self._open(candidate, mode, log)
            if opened is not None:
                return (*opened, candidate, mode)
        return None

    async def _open_hedged(
        self,
        queue: _CandidateQueue,
        mode: Mode,
        hedge: HedgeConfig,
        reasons: list[str],
        log: EventLogger,
    ) -> tuple[AsyncGenerator[str, None], str | None, Attempt, Candidate, Mode] | None:
        running: dict[asyncio.Task[Opened | None], tuple[Candidate, Mode]] = {}
        exhausted = False
        launched_at = 0.0
        latest: Candidate | None = None

        def launch() -> bool:
            nonlocal exhausted, launched_at, latest, mode
            choice = None if exhausted else self._next_candidate(queue, mode, reasons, log)
            if choice is None:
                exhausted = True
                return False
            latest, mode = choice
            task = asyncio.create_task(self._open(latest, mode, log))
            running[task] = choice
            launched_at = time.perf_counter()
            return True

        try:
            launch()
            while running:
                delay = None
                if not exhausted and latest is not None and len(running) < hedge.max_parallel:
                    waited = time.perf_counter() - launched_at
                    delay = max(0.0, self._hedge_after_ms(hedge, latest) / 1000 - waited)
                done, _ = await asyncio.wait(
                    running, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    waited_ms = _ms(launched_at)
                    if launch() and latest is not None:
                        log.info("attempt.hedge", provider=latest.name, after_ms=waited_ms)
                    continue
                for task in done:
                    candidate, used_mode = running.pop(task)
                    opened = task.result()
                    if opened is not None:
                        await self._drop_losers(running, opened[2], log)
                        return (*opened, candidate, used_mode)
                if not running:
                    launch()  # every attempt in flight failed: move on at once
            return None
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    def _hedge_after_ms(self, hedge: HedgeConfig, candidate: Candidate) -> float:
        if hedge.after_ms != "p95":
            return hedge.after_ms
        p95 = self._router.stats[candidate.name].p95_ttft_ms()
        return hedge.p95_fallback_ms if p95 is None else p95

    async def _drop_losers(
        self,
        running: dict[asyncio.Task[Opened | None], tuple[Candidate, Mode]],
        winner: Attempt,
        log: EventLogger,
    ) -> None:
        """Cancel the hedged attempts that lost; close any that got a first chunk too."""
        tasks = list(running)
        running.clear()
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, tuple):
                await result[0].aclose()
        for attempt in self.attempts:
            if attempt.outcome == "running" and attempt is not winner:
                attempt.outcome = "hedge_lost"
                attempt.duration_ms = attempt.elapsed_ms()
                self._router.health.release(attempt.provider)
                log.info("attempt.hedge_lost", provider=attempt.provider, model=attempt.model)

    async def _open(self, candidate: Candidate, mode: Mode, log: EventLogger) -> Opened | None:
        """Try ``candidate`` (with retries) up to its first chunk; None when it failed."""
        router = self._router

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.info(
                "attempt.retry",
                provider=candidate.name,
                model=candidate.upstream_model,
                delay_s=round(state.upcoming_sleep, 3),
                **(describe_error(error) if error else {}),
            )

        continue_from = self.text if mode == "continue" else None
        try:
            opened: Opened = await router.retry.call(
                self._try_once,
                candidate,
                continue_from,
                log,
                give_up=lambda: router.health.state(candidate.name) != "closed",
                before_sleep=before_sleep,
            )
        except InvalidRequestError:
            raise  # the caller's mistake: no other provider would take it either
        except PolyrouteError:
            return None  # recorded in self.attempts and logged by _try_once
        return opened

    async def _try_once(
        self, candidate: Candidate, continue_from: str | None, log: EventLogger
    ) -> Opened:
        attempt = Attempt(candidate.name, candidate.upstream_model)
        self.attempts.append(attempt)
        log.info(
            "attempt.start",
            provider=candidate.name,
            model=candidate.upstream_model,
            attempt=len(self.attempts),
        )
        options: dict[str, Any] = {"report": attempt.report, **self._params}
        if continue_from:
            options["continue_from"] = continue_from
        generator = candidate.entry.provider.create_async_generator(
            candidate.upstream_model, self._messages, **options
        )
        try:
            first = await anext(generator, None)
        except PolyrouteError as error:
            self._fail(attempt, candidate, error, log)
            raise
        attempt.ttft_ms = attempt.elapsed_ms()
        self._router.stats[candidate.name].record_first_chunk(attempt.ttft_ms)
        return generator, first, attempt

    def _succeed(
        self, attempt: Attempt, candidate: Candidate, log: EventLogger, started: float
    ) -> None:
        attempt.outcome = "ok"
        attempt.duration_ms = attempt.elapsed_ms()
        self._router.health.record_success(candidate.name)
        self._router.stats[candidate.name].record_success(
            attempt.chars, attempt.duration_ms - (attempt.ttft_ms or 0.0)
        )
        log.info(
            "route.done",
            provider=candidate.name,
            model=candidate.upstream_model,
            chunks=len(self._parts),
            chars=sum(map(len, self._parts)),
            relays=len(self.switches),
            duration_ms=_ms(started),
        )

    def _fail(
        self, attempt: Attempt, candidate: Candidate, error: PolyrouteError, log: EventLogger
    ) -> None:
        attempt.outcome = "failed"
        attempt.error = error
        attempt.duration_ms = attempt.elapsed_ms()
        log.warning(
            "attempt.failed",
            provider=candidate.name,
            model=candidate.upstream_model,
            **describe_error(error),
        )
        router = self._router
        if counts_against_health(error):
            router.stats[candidate.name].record_failure()
            if router.health.record_failure(candidate.name):
                log.warning(
                    "provider.cooldown",
                    provider=candidate.name,
                    seconds=router.settings.cooldown.seconds,
                )

    def _cancel(self, log: EventLogger, started: float) -> None:
        self.status = "cancelled"
        for attempt in self.attempts:
            if attempt.outcome == "running":
                attempt.outcome = "cancelled"
                self._router.health.release(attempt.provider)
        log.info(
            "route.cancelled",
            provider=self.provider,
            chars=sum(map(len, self._parts)),
            duration_ms=_ms(started),
        )
