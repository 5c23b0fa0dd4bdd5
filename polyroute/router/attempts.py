"""The attempt engine: one request's walk over candidate entries, shared by every
operation (chat streams, embeddings).

It walks the model chain (the resolved model, then its fallbacks) and, for each model,
the entries that can serve it now, in order; admits each through its circuit; claims a
place under the entry's limits and, past the first attempt, one attempt out of the
retry budget; retries retryable errors on an entry (tenacity, from ``retry``) before
moving on; records every attempt, the entries' health and statistics; and logs the
routing events (``route.start``, ``attempt.start``, ``attempt.retry``,
``attempt.failed``, ``route.next_provider``, ``route.fallback``, ``route.done``,
``route.failed``, ``route.cancelled``). What an operation does with an entry is one
callable; what is particular to a stream (delivery, relays, hedging) stays in the
stream.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NoReturn, TypeVar

from tenacity import RetryCallState

from polyroute.core.attempts import Attempt
from polyroute.core.errors import (
    AllProvidersFailed,
    AuthenticationError,
    GatewayOverloaded,
    InvalidRequestError,
    PolyrouteError,
    UpstreamError,
    UpstreamStatusError,
    describe_error,
)
from polyroute.core.http import adding_headers
from polyroute.core.logging import EventLogger, get_logger
from polyroute.core.request import Capability
from polyroute.router.context import RouteContext
from polyroute.router.observe import NO_WATCHES, AttemptTarget, Watches
from polyroute.router.policy import Candidate
from polyroute.router.state import Denied, Lease
from polyroute.router.state.contract import TokenEstimate

_log = get_logger()
_T = TypeVar("_T")
Call = Callable[[Attempt, Lease], Awaitable[_T]]
"""What an operation does with one entry: given its attempt record and its place
(the lease, which the call now owns), the result, or a typed error."""


def elapsed_ms(since: float) -> float:
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


class NotTriedError(PolyrouteError):
    """Not an upstream's answer: no attempt is made (no headroom, or the retry budget
    is spent); the engine moves on, or stops, with this as the reason."""

    def __init__(self, reason: str, *, stop: bool = False) -> None:
        super().__init__(reason)
        self.stop = stop


class CandidateQueue:
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


class AttemptEngine:
    """One request's attempts: ``begin()``, then ``next_candidate()`` (or the queue and
    :meth:`admit`, for a caller with its own order) and :meth:`attempt` until one
    succeeds (:meth:`succeed`) or none is left (:meth:`give_up`).

    ``attempts`` is the request's record of tries (shared with its caller), ``reasons``
    why entries were skipped, ``log`` the request's event logger.
    """

    def __init__(
        self,
        context: RouteContext,
        *,
        request_id: str,
        requested_model: str,
        chain: list[str],
        needs: frozenset[Capability],
        estimate: TokenEstimate,
        attempts: list[Attempt],
        watches: Watches = NO_WATCHES,
    ) -> None:
        self.context = context
        self.requested_model = requested_model
        self.chain = chain
        self.attempts = attempts
        self.log: EventLogger = _log.bind(request_id=request_id)
        self.watches = watches
        """The request's live observers (tracing): told of each attempt and event."""
        if watches:
            self.log = self.log.listened(watches.routing_event)
        self.reasons: list[str] = []
        self.started = time.perf_counter()
        self.stopped = False
        """The retry budget is spent: no further attempt."""
        self._needs = needs
        self._estimate = estimate
        self._previous: Candidate | None = None
        self.queue = CandidateQueue(iter(()))

    # Walking the candidates --------------------------------------------------------

    def begin(self, preferred: str | None = None) -> None:
        """Count the request, list the first model's candidates (``route.start``);
        the entry named ``preferred`` (affinity's pin) first, if it is one of them."""
        candidates, excluded = self._candidates(self.chain[0])
        if preferred is not None:
            # sorted() is stable: the others keep the order policy and balance gave them.
            candidates = sorted(candidates, key=lambda candidate: candidate.name != preferred)
        self.context.state.count_request()
        self.log.info(
            "route.start",
            requested_model=self.requested_model,
            model=self.chain[0],
            fallbacks=self.chain[1:],
            candidates=[candidate.name for candidate in candidates],
            excluded=excluded,
        )
        self.queue = CandidateQueue(self._walk(candidates, excluded))

    def _candidates(self, model: str) -> tuple[list[Candidate], list[str]]:
        context = self.context
        settings = context.settings
        return context.policy.candidates(
            model, context.state, settings.order, self._needs, settings.balance
        )

    def _walk(self, candidates: list[Candidate], excluded: list[str]) -> Iterator[Candidate]:
        """Candidates across the model chain, in order; the first model's are given, the
        rest computed when reached; why each excluded entry was goes to ``reasons``."""
        for index, model in enumerate(self.chain):
            if index:
                candidates, excluded = self._candidates(model)
                if excluded:  # the first model's are told by route.start
                    names = [candidate.name for candidate in candidates]
                    self.log.info(
                        "route.excluded", model=model, candidates=names, excluded=excluded
                    )
            self.reasons += excluded
            yield from candidates

    async def next_candidate(self) -> Candidate | None:
        """The next candidate its circuit admits, in order; ``None`` when none is left
        (or the retry budget is spent)."""
        while not self.stopped and (candidate := self.queue.next_any()) is not None:
            if await self.admit(candidate):
                return candidate
        return None

    async def admit(self, candidate: Candidate) -> bool:
        """Whether ``candidate``'s circuit lets a request through now (else the reason
        is noted); an admitted one after another is logged as the hand-over it is."""
        if not await self.context.state.admit(candidate.name):
            self.reasons.append(f"{candidate.name} ({candidate.model}): cooling down")
            self.log.info(
                "route.skip",
                provider=candidate.name,
                model=candidate.upstream_model,
                reason="cooling down",
            )
            return False
        previous = self._previous
        if previous is None and candidate.model != self.chain[0]:
            # No entry of the model asked for could be tried (none configured with a key,
            # all cooling down): the first attempt is already on a fallback model.
            self.log.info(
                "route.fallback",
                from_provider=None,
                from_model=self.chain[0],
                to_provider=candidate.name,
                to_model=candidate.model,
            )
        elif previous is not None:
            # Another entry for the same model, or the next model of the fallback chain.
            same_model = candidate.model == previous.model
            self.log.info(
                "route.next_provider" if same_model else "route.fallback",
                from_provider=previous.name,
                from_model=previous.model,
                to_provider=candidate.name,
                to_model=candidate.model,
            )
        self._previous = candidate
        return True

    # Trying one -------------------------------------------------------------------

    async def attempt(self, candidate: Candidate, call: Call[_T]) -> _T | None:
        """``call`` on ``candidate``, retried on retryable errors while its circuit
        stays closed; ``None`` when it failed or was not tried (recorded, logged, and
        the reason kept). Raises :class:`InvalidRequestError`: the caller's mistake,
        which no other entry would take either."""
        context = self.context
        log = self.log

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.info(
                "attempt.retry",
                provider=candidate.name,
                model=candidate.upstream_model,
                delay_s=round(state.upcoming_sleep, 3),
                retry=state.attempt_number,
                retries=context.retry.config.attempts - 1,
                **(describe_error(error) if error else {}),
            )

        try:
            return await context.retry.call(
                self._try_once,
                candidate,
                call,
                give_up=lambda: context.state.state(candidate.name) != "closed",
                before_sleep=before_sleep,
            )
        except InvalidRequestError:
            raise
        except GatewayOverloaded:
            # The gateway's own trouble (recorded by _try_once): another entry would
            # fare no better now, and a retry would only add to the load.
            self.stopped = True
            return None
        except NotTriedError as error:
            self.reasons.append(f"{candidate.name} ({candidate.model}): {error}")
            self.stopped = self.stopped or error.stop
            return None
        except PolyrouteError:
            return None  # recorded and logged by _try_once

    async def _try_once(self, candidate: Candidate, call: Call[_T]) -> _T:
        lease = await self._claim(candidate)
        attempt = Attempt(candidate.name, candidate.upstream_model)
        self.attempts.append(attempt)
        self.log.info(
            "attempt.start",
            provider=candidate.name,
            model=candidate.upstream_model,
            attempt=len(self.attempts),
        )
        headers = self._added_headers(attempt, candidate) if self.watches else None
        try:
            if headers is None:
                return await call(attempt, lease)
            with adding_headers(headers):  # around the call: its upstream requests carry them
                return await call(attempt, lease)
        except PolyrouteError as error:
            lease.end()
            await self.fail(attempt, candidate, error)
            raise
        except BaseException:
            lease.end()  # cancelled (a hedge that lost, a consumer that left)
            raise

    def _added_headers(self, attempt: Attempt, candidate: Candidate) -> dict[str, str] | None:
        """What the request's watches add to the attempt's upstream request."""
        provider = candidate.entry.provider
        url = provider.request_url(candidate.upstream_model) or provider.base_url
        target = AttemptTarget(candidate.name, candidate.upstream_model, provider.type_name, url)
        return self.watches.attempt_headers(attempt, target)

    async def _claim(self, candidate: Candidate) -> Lease:
        """A place on the entry and, past a request's first attempt, one attempt out of
        the retry budget; raises :class:`NotTriedError` (with an event) when there is none."""
        state = self.context.state
        lease = await state.acquire(candidate.name, self._estimate)
        if isinstance(lease, Denied):
            self.log.info(
                "route.skip",
                provider=candidate.name,
                model=candidate.upstream_model,
                reason=lease.reason,
                retry_in_s=round(lease.retry_in, 3),
            )
            raise NotTriedError(f"skipped: {lease.reason}")
        if self.attempts and not await state.spend_attempt():
            lease.end()
            self.log.warning(
                "retry.budget_exhausted",
                provider=candidate.name,
                model=candidate.upstream_model,
                attempts=len(self.attempts),
            )
            raise NotTriedError("retry budget exhausted", stop=True)
        return lease

    # Outcomes ----------------------------------------------------------------------

    async def fail(self, attempt: Attempt, candidate: Candidate, error: PolyrouteError) -> None:
        """Record a failed attempt: its outcome, the event, the entry's figures and
        circuit (when the failure says something about the entry; the gateway's own
        trouble, :class:`GatewayOverloaded`, never does)."""
        own = isinstance(error, GatewayOverloaded)  # no fault of the entry's
        attempt.outcome = "gateway_overloaded" if own else "failed"
        attempt.error = error
        attempt.duration_ms = attempt.elapsed_ms()
        self.log.warning(
            "attempt.failed",
            provider=candidate.name,
            model=candidate.upstream_model,
            **describe_error(error),
        )
        context = self.context
        if counts_against_health(error):
            context.state.stats[candidate.name].record_failure()
            if await context.state.record_failure(candidate.name):
                self.log.warning(
                    "provider.cooldown", provider=candidate.name, seconds=context.cooldown_seconds
                )

    def succeed(
        self, attempt: Attempt, candidate: Candidate, *, attempt_chars: int = 0, **done: Any
    ) -> None:
        """Record the attempt that served the request (``attempt_chars``: the characters
        it delivered, for its speed) and log ``route.done`` with ``done``'s fields."""
        attempt.outcome = "ok"
        attempt.duration_ms = attempt.elapsed_ms()
        attempt.chars = attempt_chars
        state = self.context.state
        state.record_success(candidate.name)
        state.stats[candidate.name].record_success(
            attempt_chars, attempt.duration_ms - (attempt.ttft_ms or 0.0)
        )
        self.log.info(
            "route.done",
            provider=candidate.name,
            model=candidate.upstream_model,
            **done,
            attempts=len(self.attempts),
            duration_ms=elapsed_ms(self.started),
        )

    def give_up(self) -> NoReturn:
        """Every candidate failed or was skipped: raise :class:`AllProvidersFailed`."""
        error = AllProvidersFailed(self.requested_model, self.attempts, self.reasons)
        self.log.warning(
            "route.failed",
            model=self.requested_model,
            attempts=len(self.attempts),
            reasons=error.by_entry() + self.reasons,
            duration_ms=elapsed_ms(self.started),
            error_type="AllProvidersFailed",
        )
        raise error

    def failed(self, error: PolyrouteError, **fields: Any) -> None:
        """Log ``route.failed`` for ``error`` (a failure the caller raises itself)."""
        self.log.warning(
            "route.failed",
            model=self.requested_model,
            attempts=len(self.attempts),
            **fields,
            duration_ms=elapsed_ms(self.started),
            **describe_error(error),
        )

    def cancel(self, **fields: Any) -> None:
        """The consumer left: running attempts are cancelled and their places released."""
        for attempt in self.attempts:
            if attempt.outcome == "running":
                attempt.outcome = "cancelled"
                self.context.state.release(attempt.provider)
        self.log.info("route.cancelled", **fields, duration_ms=elapsed_ms(self.started))
