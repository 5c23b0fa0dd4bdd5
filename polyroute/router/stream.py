"""RouterStream: one routed answer, from the first candidate to the last relay.

The walk over candidates (the model chain, circuits, limits, retries, health,
statistics and the routing events) is the attempt engine's (router/attempts.py), as
for every operation; what is particular to a stream is here. Until the first chunk,
failures are invisible to the caller. After
it, a failure hands the answer to the next candidate (``on_midstream_failure``):
``continue`` asks it to carry on from the partial text, dropping what it repeats at
the seam; ``restart`` sends a restart marker and its whole answer; ``raise`` raises
the upstream's error with the partial answer kept on the stream. A tool call that
has begun to reach the consumer is never spliced (see ``tool_calls: atomic``).

The loop is four named steps: open (the next candidate, up to its first chunk),
deliver (inline in the generator: the per-chunk hot path), hand over (a relay after
a failure) and give up.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from polyroute.core.attempts import Attempt
from polyroute.core.deltas import (
    AssistantMessage,
    Delta,
    FinishDelta,
    MessageBuilder,
    ReasoningDelta,
    ReasoningSignatureDelta,
    RedactedReasoningDelta,
    RestartDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageDelta,
    WireDelta,
)
from polyroute.core.errors import (
    PolyrouteError,
    PrefillRefusedError,
    ToolCallInterruptedError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
)
from polyroute.core.logging import EventLogger, get_logger, new_request_id
from polyroute.core.pricing import Cost, CostStatus
from polyroute.core.request import ChatRequest, estimated_input_tokens
from polyroute.core.wire import WireFormat
from polyroute.router.affinity import AffinityPlan, pinned, repin
from polyroute.router.attempts import AttemptEngine, elapsed_ms
from polyroute.router.budget import BudgetPlan, cost_ceiling, remaining_usd
from polyroute.router.cache import CachePlan, StoredAnswer, decode_answer, encode_answer
from polyroute.router.context import Choice, Mode, RouteContext
from polyroute.router.hedge import Hedge
from polyroute.router.observe import (
    NO_LABELS,
    NO_WATCHES,
    RequestLabels,
    RequestRecord,
    RequestStart,
    build_record,
    is_cancellation,
    notify,
    record_status,
    watch_request,
)
from polyroute.router.policy import Candidate
from polyroute.router.prefill import Continuation, asks_for_reasoning, choose, learn_refusal
from polyroute.router.relay import Seam, StreamRestarted
from polyroute.router.state import Lease, Reservation

Status = Literal[
    "pending", "streaming", "complete", "switched", "restarted", "truncated", "failed", "cancelled"
]
Upstream = AsyncGenerator[list[Delta], None]
CacheState = Literal["hit", "miss", "refresh"]
_Mode = Literal["text", "deltas", "batches"]


def _texts(out: list[Delta]) -> Iterator[str]:
    """Mode ``text``: each text, and a marker where the answer starts over."""
    for delta in out:
        if type(delta) is TextDelta:
            yield delta.text
        elif type(delta) is WireDelta:
            yield from delta.texts
        elif type(delta) is RestartDelta:
            yield StreamRestarted.of(delta)


_DELIVERABLE: dict[_Mode, Callable[[list[Delta]], Iterable[Any]]] = {
    "text": _texts,
    "deltas": lambda out: out,
    "batches": lambda out: (out,),
}
"""How one upstream read's deltas are handed on, per mode: one by one, as texts only,
or as the list itself (:meth:`RouterStream.delta_batches`)."""


_REASONING = (ReasoningDelta, ReasoningSignatureDelta, RedactedReasoningDelta)
_PAST_THE_SEAM = (*_REASONING, UsageDelta)
"""Deltas a continuing provider may send before its text (its reasoning, Anthropic's
usage at the start) that pass while the seam still holds text back, without settling it."""


ASSUMED_ANSWER_TOKENS = 256
"""Answer length assumed for a ``tpm`` limit when the request sets no ``max_tokens``."""


def estimate_tokens(request: ChatRequest, input_tokens: int | None = None) -> int:
    """Tokens a request may use, before its answer says: its input (``input_tokens``,
    or estimated), plus ``max_tokens`` (or a typical answer)."""
    if input_tokens is None:
        input_tokens = estimated_input_tokens(request)
    return input_tokens + 1 + (_max_tokens(request) or ASSUMED_ANSWER_TOKENS)


def _max_tokens(request: ChatRequest) -> int | None:
    options = request.options
    answer: int | None = options.get("max_completion_tokens") or options.get("max_tokens")
    return answer


@dataclass(slots=True)
class _Opened:
    """A candidate that got to its first chunk (or to the end of an empty answer)."""

    upstream: Upstream
    first: list[Delta] | None
    attempt: Attempt
    choice: Choice
    lease: Lease
    chars_before: int = 0
    continuation: Continuation | None = None
    """How a continuing candidate was asked (``None``: not a continuation)."""

    def end(self) -> None:
        """Give the entry's place back, with the tokens the attempt reported."""
        usage = self.attempt.usage
        self.lease.end(usage.total_tokens if usage is not None else None)


@dataclass(slots=True)
class _Hold:
    """``tool_calls: atomic``: the calls of one attempt, and what came after them,
    held back until the upstream ends its answer."""

    calls: MessageBuilder = field(default_factory=MessageBuilder)
    later: list[Delta] = field(default_factory=list)

    def release(self, provider: str) -> list[Delta]:
        """Each call as one whole delta, then what was held after them; a call whose
        arguments are not JSON is the upstream's fault, not the consumer's. (Empty
        arguments pass: some servers send them for a function without parameters.)"""
        released: list[Delta] = []
        for index, call in enumerate(self.calls.tool_calls()):
            try:
                if call.arguments:
                    call.parsed_arguments()
            except ValueError:
                raise UpstreamProtocolError(
                    f"tool call {call.name!r} ended with arguments that are not JSON",
                    provider=provider,
                ) from None
            released.append(
                ToolCallDelta(index, id=call.id, name=call.name, arguments=call.arguments)
            )
        return released + self.later


@dataclass(slots=True)
class _Run:
    """The state of one routing loop: the attempt engine's walk, and the relay."""

    engine: AttemptEngine
    failure: UpstreamError | None = None
    """The mid-stream failure being relayed (text had been delivered)."""
    failed_at: float = 0.0
    failed_provider: str = ""
    relay_mode: Mode = "fresh"
    serving: _Opened | None = None
    """The candidate delivering the answer now."""
    reasoning_cut: bool = False
    """An upstream failed after reasoning but before any text: the next one restarts."""


class RouterStream:
    """One routed answer: iterate it for text, or :meth:`deltas` for every delta, and
    read what happened from its fields.

    - ``provider``, ``model``: the entry that served the (last part of the) answer and
      the upstream model name (``None`` until the first chunk);
    - ``attempts``: every try in order (:class:`polyroute.Attempt`), relays included;
    - ``text``: the text delivered so far; ``message``: the assembled
      :class:`AssistantMessage` (text, tool calls, reasoning);
    - ``status``: ``complete``; ``switched`` (relayed; ``switches`` holds the character
      offset of each hand-over); ``restarted``; ``truncated`` (a failure after part
      of the answer was delivered was raised); ``failed`` (nothing delivered);
      ``cancelled``;
    - ``finish_reason`` (``stop``, ``length``, ``tool_calls``...) and ``usage``
      (summed over attempts), as upstreams reported them, or ``None``;
    - ``cache``: ``hit`` (a stored answer was replayed: no attempts, usage details say
      ``cached``), ``miss``, ``refresh``, or ``None`` when the request does not use the
      response cache.

    Iterate it once. ``async with router.stream(...) as stream:`` closes the upstream
    response on exit, however the block is left; ``await stream.aclose()`` does too.
    """

    def __init__(
        self,
        context: RouteContext,
        request: ChatRequest,
        requested_model: str,
        chain: list[str],
        request_id: str | None = None,
        caching: CachePlan | None = None,
        budget: BudgetPlan | None = None,
        labels: RequestLabels | None = None,
        affinity: AffinityPlan | None = None,
        pass_through: frozenset[WireFormat] | None = None,
    ) -> None:
        self.request_id = request_id or new_request_id()
        self._pass_through = pass_through
        self._affinity = affinity
        self._pinned: str | None = None
        """The entry affinity's pin named before the first attempt, if any."""
        self._labels = labels or NO_LABELS
        self._started = time.perf_counter()
        self._recorded = False
        self.requested_model = requested_model
        self.provider: str | None = None
        self.model: str | None = None
        self.attempts: list[Attempt] = []
        self.status: Status = "pending"
        self.switches: list[int] = []
        self.cache: CacheState | None = None
        self._caching = caching
        self._cached_usage: Usage | None = None
        self._budget = budget
        self._costs: list[Cost | None] | None = None
        self._cost: Cost | None = None
        self._prompt_tokens: int | None = None
        self.budget_remaining_usd: float | None = None
        """With ``budget=``: what is left on the tightest budget once this request's
        reservation is counted (set when iteration starts)."""
        self._context = context
        self._request = request
        self._chain = chain
        """The resolved model, then its fallbacks."""
        self._builder = MessageBuilder()
        self._tool_call_delivered = False
        self._reasoning_delivered = False
        """Reasoning reached the consumer since the answer (re)started."""
        # `async for` gets the generator itself. Outside `async with`, the stream keeps
        # only a weak reference: after a bare `break` nothing holds it, so the event
        # loop finalizes it (closing the upstream) one turn later rather than when the
        # stream object is dropped. Inside `async with`, the stream holds it, so that
        # leaving the block closes it at once.
        self._generator: weakref.ref[AsyncGenerator[Any, None]] | None = None
        self._held: AsyncGenerator[Any, None] | None = None
        self._in_context = False
        self._watches = NO_WATCHES
        if context.observers:  # tracing watches a request live, from here
            self._watches = watch_request(context.observers, self._start_of(requested_model))

    @property
    def text(self) -> str:
        """All text delivered so far (since the last restart)."""
        return self._builder.text

    @property
    def message(self) -> AssistantMessage:
        """The answer as delivered so far, assembled: content, tool calls, reasoning."""
        return self._builder.message()

    @property
    def finish_reason(self) -> str | None:
        """Why the serving upstream stopped (``"stop"``, ``"length"``, ``"tool_calls"``...)."""
        return self._builder.finish_reason

    @property
    def ttft_ms(self) -> float | None:
        """Milliseconds to the first chunk of the answer (of the first attempt that got
        one), or ``None`` before it."""
        return next((a.ttft_ms for a in self.attempts if a.ttft_ms is not None), None)

    @property
    def usage(self) -> Usage | None:
        """Token usage summed over every attempt that reported some (a replayed
        answer's: the stored usage)."""
        total: Usage | None = self._cached_usage
        for attempt in self.attempts:
            if attempt.usage is not None:
                total = attempt.usage if total is None else total + attempt.usage
        return total

    @property
    def cost(self) -> Cost:
        """What the answer cost: the sum of its attempts' costs, each at its own
        entry's price (docs/governance.md); a replayed answer costs nothing."""
        if self._cost is not None:
            return self._cost
        cost = Cost.of_attempts(cost for cost in self.attempt_costs() if cost is not None)
        if self._costs is not None:  # final: the facts, the budget, the record, the log ask
            self._cost = cost
        return cost

    def attempt_costs(self) -> list[Cost | None]:
        """Each of :attr:`attempts`' costs, ``None`` for one that produced nothing."""
        if self._costs is not None:
            return self._costs
        costs = self._context.attempt_costs(self.attempts, self._input_tokens)
        if self.status not in ("pending", "streaming"):
            self._costs = costs  # the attempts are final: read once (facts, log, budget)
        return costs

    def _input_tokens(self) -> int:
        """The prompt's tokens, estimated once (limits, the budget's worst case and the
        cost of a cut attempt all ask)."""
        if self._prompt_tokens is None:
            self._prompt_tokens = estimated_input_tokens(self._request)
        return self._prompt_tokens

    @property
    def cost_usd(self) -> float | None:
        """:attr:`cost` in USD, ``None`` when a model it used has no known price."""
        return self.cost.usd

    @property
    def cost_status(self) -> CostStatus:
        """``exact`` (every attempt's usage as its upstream reported it), ``estimated``
        (an attempt cut before its upstream counted) or ``unpriced``."""
        return self.cost.status

    @property
    def dropped(self) -> list[str]:
        """What of the request the entries tried did not send on (options they do not
        take, what a translation from the client's format lost), without repeats."""
        return list(dict.fromkeys(name for a in self.attempts for name in a.dropped))

    def __repr__(self) -> str:
        return (
            f"<RouterStream {self.request_id[:8]} model={self.requested_model!r} "
            f"provider={self.provider!r} status={self.status} attempts={len(self.attempts)}>"
        )

    def __aiter__(self) -> AsyncGenerator[str, None]:
        """The answer's text, piece by piece (a :class:`StreamRestarted` marker, an
        empty string, where the answer starts over)."""
        if self._held is not None:
            return self._held
        return self._start("text")

    def deltas(self) -> AsyncGenerator[Delta, None]:
        """Every typed delta of the answer: text, reasoning, tool-call fragments (whole
        calls with ``tool_calls: atomic``), usage, finish, and restart markers."""
        return self._start("deltas")

    def delta_batches(self) -> AsyncGenerator[list[Delta], None]:
        """The deltas of :meth:`deltas`, in one list per upstream read (never empty):
        for a consumer that does something per read rather than per delta, such as
        one socket write for all the chunks an upstream sent at once."""
        return self._start("batches")

    def _start(self, mode: _Mode) -> AsyncGenerator[Any, None]:
        if self._generator is not None:
            raise RuntimeError("a RouterStream can be iterated only once")
        generator = self._run(mode)
        self._generator = weakref.ref(generator)
        if self._in_context:
            self._held = generator
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
        if self.status == "pending":  # closed before it began: cancelled, and recorded
            self._ended(None)

    async def __aenter__(self) -> RouterStream:
        self._in_context = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # The routing loop -----------------------------------------------------------

    def _ceiling(self, budget: BudgetPlan) -> float:
        """The request's worst case, to hold on ``budget`` (raises
        :class:`InvalidRequestError` for a model without a price)."""
        return cost_ceiling(
            self._context.policy,
            self._chain,
            self._input_tokens(),
            _max_tokens(self._request) or budget.default_max_tokens,
        )

    async def _run(self, mode: _Mode) -> AsyncGenerator[Any, None]:
        # Longer than the other steps on purpose: deliver is inline (see below). Every
        # delta of one upstream read goes to `out`, which is handed on in the mode's
        # form (`deliverable`, chosen once) before the next read is awaited, so that
        # what came before a failure is delivered first.
        deliverable = _DELIVERABLE[mode]
        self._context.state.ensure_started()
        run: _Run | None = None
        ended: BaseException | None = None
        held: Reservation | None = None
        try:
            # Under a budget, its worst case first; settled below however it ends. (In
            # this generator, not one around it: that would cost an async hop per read.)
            if (budget := self._budget) is not None:  # raises BudgetExceededError
                ceiling, keeper = self._ceiling(budget), self._context.budgets
                held = keeper.reserve_at_once(budget, ceiling) or await keeper.reserve(
                    budget, ceiling
                )
                self.budget_remaining_usd = remaining_usd(held)
            if self._caching is not None and (stored := await self._lookup(self._caching)):
                if replayed := self._replay(stored):
                    for item in deliverable(replayed):
                        yield item
                return
            if self._affinity is not None:
                self._pinned = await pinned(self._context.state, self._affinity)
            run = self._begin()
            builder = self._builder
            while (opened := await self._open_next(run)) is not None:
                upstream, attempt = opened.upstream, opened.attempt
                seam = self._hand_over(run, opened)
                out: list[Delta] = []
                if opened.choice.mode == "restart":
                    out.append(self._restart(opened))
                hold = self._hold_for(opened)
                parts, fragments = builder.text_parts, builder.tool_fragments
                try:
                    # Deliver: the per-chunk hot path, kept inline (a nested generator
                    # would cost one more async hop per chunk).
                    batch = opened.first
                    while batch is not None:
                        for delta in batch:
                            if type(delta) is TextDelta:
                                text = delta.text
                                if seam is not None:
                                    text = seam.feed(text)
                                    if seam.settled:
                                        seam = None
                                    if not text:
                                        continue
                                    delta = TextDelta(text)
                                parts.append(text)
                                out.append(delta)
                                continue
                            if type(delta) is WireDelta:  # relayed: never under a seam or hold
                                parts += delta.texts
                                out.append(delta)
                                continue
                            if type(delta) is ToolCallDelta and hold is None and seam is None:
                                # The tool-call hot path: a fragment passed on as it is.
                                self._tool_call_delivered = True
                                fragments.append(delta)
                                out.append(delta)
                                continue
                            if seam is not None and not isinstance(delta, _PAST_THE_SEAM):
                                out += self._flush(seam)
                                seam = None
                            out += self._other(delta, attempt, hold)
                        if out:
                            for item in deliverable(out):
                                yield item
                            out = []
                        try:  # not anext(upstream, None): see Provider.stream_batches
                            batch = await upstream.__anext__()
                        except StopAsyncIteration:
                            batch = None
                    out += self._end_of_answer(seam, hold, attempt)
                    if out:
                        for item in deliverable(out):
                            yield item
                except PolyrouteError as error:
                    await self._on_failure(run, opened, error)
                    continue
                finally:
                    opened.end()
                    await upstream.aclose()
                self._succeed(run, opened)
                if self._affinity is not None:  # before the answer ends: its next turn may follow
                    serving, log = opened.choice.candidate.name, run.engine.log
                    await repin(self._context.state, self._affinity, self._pinned, serving, log)
                if self._caching is not None and self.status in ("complete", "switched"):
                    self._store(self._caching)
                return
            self._give_up(run)
        except BaseException as error:
            ended = error
            if is_cancellation(error):
                self._cancel(run)
            raise
        finally:
            self._ended(ended)  # however it ended: one record
            if held is not None:
                self._context.budgets.settle(held, self.cost)

    # The response cache ------------------------------------------------------------

    async def _lookup(self, plan: CachePlan) -> StoredAnswer | None:
        """The stored answer to replay (mode ``use``), else ``None``; sets ``cache``."""
        if plan.mode == "refresh":
            self.cache = "refresh"
            return None
        value = await plan.cache.get(plan.key)
        stored = decode_answer(value) if value is not None else None
        self.cache = "hit" if stored is not None else "miss"
        return stored

    def _replay(self, stored: StoredAnswer) -> list[Delta]:
        """A stored answer's deltas, delivered as a live answer's are."""
        self.provider, self.model = stored.provider, stored.model
        self._cached_usage = stored.usage
        for delta in stored.deltas:
            self._builder.add(delta)
        self.status = "complete"
        log = get_logger().bind(request_id=self.request_id)
        log.info("cache.hit", model=self.requested_model, provider=stored.provider)
        return list(stored.deltas)

    def _store(self, plan: CachePlan) -> None:
        """Store the answer just delivered, in the background."""
        value = encode_answer(
            self.provider, self.model, self._builder.message(), self.finish_reason, self.usage
        )
        plan.cache.put_later(plan.key, value)
        log = get_logger().bind(request_id=self.request_id)
        log.info("cache.store", provider=self.provider, bytes=len(value))

    def _begin(self) -> _Run:
        request = self._request
        engine = AttemptEngine(
            self._context,
            request_id=self.request_id,
            requested_model=self.requested_model,
            chain=self._chain,
            needs=request.needs,
            estimate=lambda: estimate_tokens(request, self._input_tokens()),
            attempts=self.attempts,
            watches=self._watches,
        )
        engine.begin(self._pinned)
        self.status = "streaming"
        return _Run(engine)

    # Deliver: what is not plain text ------------------------------------------------

    def _restart(self, opened: _Opened) -> RestartDelta:
        marker = RestartDelta(discarded=opened.chars_before, provider=opened.choice.name)
        self._builder.add(marker)
        self._reasoning_delivered = False
        opened.chars_before = 0
        return marker

    def _hold_for(self, opened: _Opened) -> _Hold | None:
        atomic = self._context.tool_call_mode(opened.choice.candidate) == "atomic"
        return _Hold() if atomic else None

    def _other(self, delta: Delta, attempt: Attempt, hold: _Hold | None) -> tuple[Delta, ...]:
        """Record a delta other than text; the deltas to pass on now (none when held)."""
        if hold is not None:
            if isinstance(delta, ToolCallDelta):
                hold.calls.tool_fragments.append(delta)
                return ()
            if hold.calls.has_tool_calls:
                hold.later.append(delta)
                return ()
        return (self._record(delta, attempt),)

    def _record(self, delta: Delta, attempt: Attempt) -> Delta:
        if isinstance(delta, ToolCallDelta):
            self._tool_call_delivered = True
        elif isinstance(delta, _REASONING):
            self._reasoning_delivered = True
        elif isinstance(delta, UsageDelta):
            usage = delta.usage
            attempt.usage = usage if attempt.usage is None else attempt.usage + usage
        elif isinstance(delta, FinishDelta):
            attempt.finish_reason = delta.reason
        self._builder.add(delta)
        return delta

    def _flush(self, seam: Seam) -> list[TextDelta]:
        kept = seam.flush()
        if not kept:
            return []
        self._builder.text_parts.append(kept)
        return [TextDelta(kept)]

    def _end_of_answer(
        self, seam: Seam | None, hold: _Hold | None, attempt: Attempt
    ) -> list[Delta]:
        """The upstream ended its answer: what was still held back, now released."""
        out: list[Delta] = list(self._flush(seam)) if seam is not None else []
        if hold is not None:
            out += [self._record(delta, attempt) for delta in hold.release(attempt.provider)]
        return out

    # Open --------------------------------------------------------------------------

    async def _next_choice(self, run: _Run) -> Choice | None:
        """The next candidate to try and how; ``continue`` falls back to ``restart``
        when no candidate that can continue remains, if configured so."""
        settings, engine = self._context.settings, run.engine
        mode: Mode = "fresh"
        if run.failure is not None:
            mode = "continue" if settings.on_midstream_failure == "continue" else "restart"
        elif run.reasoning_cut:
            mode = "restart"  # nothing to continue: the reasoning shown is taken back
        while not engine.stopped:
            if mode == "continue":
                candidate = engine.queue.next_continuing(engine.reasons)
                if candidate is None and settings.continuation_fallback == "restart":
                    mode = "restart"
                    continue
            else:
                candidate = engine.queue.next_any()
            if candidate is None:
                return None
            if await engine.admit(candidate):
                return Choice(candidate, mode)
        return None

    async def _open_next(self, run: _Run) -> _Opened | None:
        """Open the next candidate that gets to a first chunk, hedging when configured;
        ``None`` when every candidate failed."""
        context = self._context
        if context.settings.hedge is not None:
            hedge: Hedge[_Opened] = Hedge(
                context.settings.hedge,
                context.state.stats,
                run.engine.log,
                next_choice=lambda: self._next_choice(run),
                open_one=lambda choice: self._open(choice, run),
                close=self._close_loser,
            )
            opened = await hedge.open()
            if opened is not None:
                self._drop_hedge_losers(opened.attempt, run.engine.log)
            return opened
        while (choice := await self._next_choice(run)) is not None:
            if (opened := await self._open(choice, run)) is not None:
                return opened
        return None

    async def _close_loser(self, opened: _Opened) -> None:
        opened.end()
        await opened.upstream.aclose()

    def _drop_hedge_losers(self, winner: Attempt, log: EventLogger) -> None:
        for attempt in self.attempts:
            if attempt.outcome == "running" and attempt is not winner:
                attempt.outcome = "hedge_lost"
                attempt.duration_ms = attempt.elapsed_ms()
                self._context.state.release(attempt.provider)
                log.info("attempt.hedge_lost", provider=attempt.provider, model=attempt.model)

    async def _open(self, choice: Choice, run: _Run) -> _Opened | None:
        """Try ``choice`` (with retries) up to its first chunk; None when it failed or
        was not tried (the reason is kept by the engine)."""

        async def first_chunk(attempt: Attempt, lease: Lease) -> _Opened:
            return await self._open_upstream(choice, attempt, lease)

        return await run.engine.attempt(choice.candidate, first_chunk)

    async def _open_upstream(self, choice: Choice, attempt: Attempt, lease: Lease) -> _Opened:
        """The upstream's answer to this attempt, up to its first chunk."""
        candidate, request = choice.candidate, self._request
        provider = candidate.entry.provider
        if self._builder.text_parts:
            attempt.relay_offset = sum(map(len, self._builder.text_parts))
        if request.options or request.native:
            attempt.dropped = provider.dropped(request)
        continuation: Continuation | None = None
        if choice.mode == "continue":
            upstream, first, continuation = await self._continued(candidate)
        elif self._relays(choice):
            upstream = provider.stream_batches(candidate.upstream_model, request, pass_through=True)
            first = await anext(upstream, None)
        else:
            upstream = provider.stream_batches(candidate.upstream_model, request)
            first = await anext(upstream, None)
        attempt.ttft_ms = attempt.elapsed_ms()
        self._context.state.stats[candidate.name].record_first_chunk(attempt.ttft_ms)
        return _Opened(upstream, first, attempt, choice, lease, continuation=continuation)

    def _relays(self, choice: Choice) -> bool:
        """Whether ``choice``'s text chunks may reach the consumer as they came: it speaks
        the consumer's format, and nothing must read each text first (a continuation's
        seam, ``tool_calls: atomic``'s hold)."""
        relayed = choice.candidate.entry.provider.wire_format
        return (
            self._pass_through is not None
            and relayed is not None
            and relayed in self._pass_through
            and choice.mode != "continue"
            and self._context.tool_call_mode(choice.candidate) != "atomic"
        )

    async def _continued(
        self, candidate: Candidate
    ) -> tuple[Upstream, list[Delta] | None, Continuation]:
        """A continuation of the text delivered, up to its first chunk, by prefill or by
        instruction (router/prefill.py); a prefill the model refuses is asked again at
        once by instruction (same attempt: the refusal cost nothing), and remembered."""
        context, request = self._context, self._request
        reasoning = self._reasoning_delivered or asks_for_reasoning(request)
        continuation, prefill = await choose(
            candidate, context.settings.supports_prefill, context.state, reasoning=reasoning
        )
        provider, model, partial = candidate.entry.provider, candidate.upstream_model, self.text
        upstream = provider.stream_batches(model, request, continue_from=partial, prefill=prefill)
        try:
            return upstream, await anext(upstream, None), continuation
        except PrefillRefusedError:
            if not prefill:
                raise
        await upstream.aclose()
        await learn_refusal(candidate, context.state, get_logger().bind(request_id=self.request_id))
        upstream = provider.stream_batches(model, request, continue_from=partial, prefill=False)
        return upstream, await anext(upstream, None), "instruction"

    # Hand over ---------------------------------------------------------------------

    def _hand_over(self, run: _Run, opened: _Opened) -> Seam | None:
        """Take ``opened`` as the serving candidate; after a failure, log the relay and
        return the seam that drops what a continuation repeats."""
        candidate = opened.choice.candidate
        self.provider, self.model = candidate.name, candidate.upstream_model
        opened.chars_before = sum(map(len, self._builder.text_parts))
        run.serving = opened
        if run.failure is None and not run.reasoning_cut:
            if opened.first is not None:
                run.engine.log.info(
                    "stream.first_chunk",
                    provider=candidate.name,
                    model=candidate.upstream_model,
                    ttft_ms=opened.attempt.ttft_ms,
                )
            return None
        run.relay_mode = opened.choice.mode
        relay: dict[str, Any] = {"mode": opened.choice.mode}
        if opened.continuation is not None:
            relay["continuation"] = opened.continuation
        if run.failure is not None:
            self.switches.append(opened.chars_before)
        else:
            relay["cut"] = "reasoning"  # a restart before any text: no hand-over of text
        run.engine.log.info(
            "route.relay",
            from_provider=run.failed_provider,
            to_provider=candidate.name,
            **relay,
            chars=opened.chars_before,
            gap_ms=elapsed_ms(run.failed_at),
        )
        return Seam(self.text) if opened.choice.mode == "continue" else None

    async def _on_failure(self, run: _Run, opened: _Opened, error: PolyrouteError) -> None:
        """A failure after the first chunk: note it for a relay, or give up (raise)."""
        attempt, candidate = opened.attempt, opened.choice.candidate
        attempt.chars = sum(map(len, self._builder.text_parts)) - opened.chars_before
        if isinstance(error, UpstreamConnectionError):
            error = error.after_chars(attempt.chars)  # "closed the connection after 812 ..."
        await run.engine.fail(attempt, candidate, error)
        if not isinstance(error, UpstreamError):
            self._end_failed(run, error)
            raise error
        if self._tool_call_delivered:
            interrupted = ToolCallInterruptedError(error, self._builder.message())
            self._end_failed(run, interrupted)
            raise interrupted from error
        if not self._builder.text_parts:
            # Nothing delivered yet (tool calls held back): a fresh try will do; after
            # reasoning, a restart (the consumer drops the reasoning it has).
            if self._reasoning_delivered:
                run.reasoning_cut, run.failed_provider = True, candidate.name
                run.failed_at = time.perf_counter()
            return
        settings = self._context.settings
        if settings.on_midstream_failure == "raise" or len(self.switches) >= settings.max_relays:
            self._end_failed(run, error)
            raise error
        run.failure, run.failed_provider = error, candidate.name
        run.failed_at = time.perf_counter()

    # Outcomes ----------------------------------------------------------------------

    def _succeed(self, run: _Run, opened: _Opened) -> None:
        chars = sum(map(len, self._builder.text_parts))
        self.status = "complete"
        if run.failure is not None:
            self.status = "switched" if run.relay_mode == "continue" else "restarted"
        elif run.reasoning_cut:
            self.status = "restarted"
        usage = self.usage
        run.engine.succeed(
            opened.attempt,
            opened.choice.candidate,
            attempt_chars=chars - opened.chars_before,
            chunks=len(self._builder.text_parts),
            chars=chars,
            relays=len(self.switches),
            finish_reason=self._builder.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )

    def _give_up(self, run: _Run) -> None:
        """Every candidate failed: raise the relayed failure, or AllProvidersFailed."""
        if run.failure is not None:
            self._end_failed(run, run.failure)
            raise run.failure
        self.status = "failed"
        run.engine.give_up()

    def _end_failed(self, run: _Run, error: PolyrouteError) -> None:
        delivered = bool(self._builder.text_parts) or self._tool_call_delivered
        self.status = "truncated" if delivered else "failed"
        run.engine.failed(error, chars=sum(map(len, self._builder.text_parts)))

    def _cancel(self, run: _Run | None) -> None:
        self.status = "cancelled"
        if run is None:  # left during a replay from the cache: no attempt to end
            return
        chars = sum(map(len, self._builder.text_parts))
        if (serving := run.serving) is not None and serving.attempt.outcome == "running":
            serving.attempt.chars = chars - serving.chars_before  # what it cost: estimated
        run.engine.cancel(provider=self.provider, chars=chars)

    # The record ------------------------------------------------------------------

    def _ended(self, error: BaseException | None) -> None:
        """The stream is over (``error``: what ended it, if anything): its status
        settled, and its record handed to the router's observers, once."""
        if self.status in ("pending", "streaming"):
            self.status = record_status(self.status, error)
        observers = self._context.observers
        if observers and not self._recorded:
            self._recorded = True
            notify(observers, lambda: self._request_record(error), self._watches)

    def _start_of(self, model: str) -> Callable[[], RequestStart]:
        """The request as it starts, for the observers that watch it live."""
        return lambda: RequestStart(
            self.request_id, self._labels, "chat", model, self._request.options, self._started
        )

    def _request_record(self, error: BaseException | None) -> RequestRecord:
        return build_record(
            request_id=self.request_id,
            labels=self._labels,
            endpoint="chat",
            model=self.requested_model,
            resolved_model=self.model or self._chain[0],
            provider=self.provider,
            status=record_status(self.status, error),
            attempts=self.attempts,
            cost=self.cost,
            started=self._started,
            error=error,
            finish_reason=self.finish_reason,
            cache=self.cache,
            content=self._content,
        )

    def _content(self) -> Mapping[str, Any]:
        """The messages as sent (OpenAI's shape) and the answer as delivered."""
        message = self._builder.message()
        answer = message.as_dict()
        if message.reasoning:
            answer["reasoning"] = message.reasoning
        return {"messages": [m.as_openai() for m in self._request.messages], "answer": answer}
