"""What a routed request leaves behind once it ends: one :class:`RequestRecord`, handed to
the router's observers (docs/observability.md).

This is the seam between the router and whatever keeps records: the gateway's request
log (a store, written in the background), a user's own log, tracing. The router
does not know who listens: it is handed :class:`RequestObserver` s and calls each once
per request, when the request ends (a stream complete, failed, cut or closed by its
consumer; an embeddings call answered or failed). The record is built then, once, off
the per-chunk path, by :func:`build_record`, and only when someone listens.

Tracing needs a little more, live: a ``traceparent`` on each upstream request naming
the attempt's span, and the routing events as they happen. An observer that is also a
:class:`RequestWatcher` gets a :class:`RequestWatch` per request as it starts, asked
once per attempt (for headers) and per routing event, never per chunk.

A record holds names, never secrets: the key's and team's names, errors redacted
(polyroute.core.redaction). Message content and the answer are in it only when the
caller's :class:`RequestLabels` say ``log_content``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias, cast, get_args

from polyroute.core.attempts import Attempt
from polyroute.core.errors import describe_error
from polyroute.core.logging import get_logger
from polyroute.core.pricing import CHARS_PER_OUTPUT_TOKEN, Cost, CostStatus
from polyroute.core.redaction import redact

RecordStatus: TypeAlias = Literal["complete", "switched", "truncated", "failed", "cancelled"]
RECORD_STATUSES: tuple[str, ...] = get_args(RecordStatus)
MAX_ERROR_CHARS = 2000
"""An error's text is cut here: a record is one row, not a dump."""

_log = get_logger()
_STREAM_STATUSES: dict[str, RecordStatus] = {
    "complete": "complete",
    "switched": "switched",
    "restarted": "switched",  # relayed too: the new provider's whole answer replaced it
    "truncated": "truncated",
    "failed": "failed",
    "cancelled": "cancelled",
}


@dataclass(frozen=True, slots=True)
class RequestLabels:
    """What the caller of a request knows and the router does not: the gateway's
    endpoint, the key's and team's names (never a secret), and whether the record may
    hold the messages and the answer (``log_content``), and the client's
    ``traceparent``. ``endpoint`` ``None``: the operation's own (``chat`` for a stream,
    ``embeddings``)."""

    endpoint: str | None = None
    key: str | None = None
    team: str | None = None
    log_content: bool = False
    traceparent: str | None = None
    """The client's W3C ``traceparent`` header, for tracing to continue its trace."""


NO_LABELS = RequestLabels()


def token_counts(attempts: Iterable[Attempt]) -> tuple[int, int, int, int]:
    """:meth:`TokenCounts.of` as a plain tuple (input, cached input, output, reasoning):
    the spend ledger's row takes them so, for every served request."""
    inputs = cached = outputs = reasoning = 0
    for attempt in attempts:
        usage = attempt.usage
        if usage is None:
            outputs += math.ceil(attempt.chars / CHARS_PER_OUTPUT_TOKEN)
            continue
        inputs += usage.prompt_tokens
        cached += usage.cache_read_tokens
        outputs += usage.completion_tokens
        reasoning += usage.reasoning_tokens
    return inputs, cached, outputs, reasoning


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Tokens of a request, summed over its attempts (``usage`` in a record)."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def of(cls, attempts: Iterable[Attempt]) -> TokenCounts:
        """As upstreams reported them; an attempt cut before it reported its usage adds
        the text it delivered at 4 characters a token (as its cost's estimate does, and
        as the spend ledger counts it)."""
        return cls(*token_counts(attempts))

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_json(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One try at one provider entry, as a record keeps it.

    ``outcome`` as :class:`~polyroute.Attempt` names it (``ok``, ``failed``,
    ``cancelled``, ``hedge_lost``); ``error_type`` and ``error`` (redacted) when it
    failed, ``status_code`` when the upstream answered an HTTP error. Times in
    milliseconds: ``started_ms`` from the request's start, ``ttft_ms`` and
    ``duration_ms`` from the attempt's own. ``chars``: the text it delivered;
    ``relay_offset``: the characters already delivered when it took over (0 for the
    first).
    """

    provider: str
    model: str
    outcome: str
    error_type: str | None
    error: str | None
    status_code: int | None
    started_ms: float
    ttft_ms: float | None
    duration_ms: float | None
    chars: int
    relay_offset: int

    @classmethod
    def of(cls, attempt: Attempt, request_started: float) -> AttemptRecord:
        error = attempt.error
        duration = attempt.duration_ms
        if duration is None:  # cancelled: it ran until now
            duration = attempt.elapsed_ms()
        error_type = message = status_code = None
        if error is not None:
            status = getattr(error, "status", None)
            error_type, message = type(error).__name__, error_text(error)
            status_code = status if isinstance(status, int) else None
        return cls(  # positional, in the fields' order: made for every attempt
            attempt.provider,
            attempt.model,
            attempt.outcome,
            error_type,
            message,
            status_code,
            round(max(0.0, attempt.started - request_started) * 1000, 3),
            attempt.ttft_ms,
            duration,
            attempt.chars,
            attempt.relay_offset,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "outcome": self.outcome,
            "error_type": self.error_type,
            "error": self.error,
            "status_code": self.status_code,
            "started_ms": self.started_ms,
            "ttft_ms": self.ttft_ms,
            "duration_ms": self.duration_ms,
            "chars": self.chars,
            "relay_offset": self.relay_offset,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttemptRecord:
        return cls(
            provider=data["provider"],
            model=data["model"],
            outcome=data["outcome"],
            error_type=data.get("error_type"),
            error=data.get("error"),
            status_code=data.get("status_code"),
            started_ms=data.get("started_ms") or 0.0,
            ttft_ms=data.get("ttft_ms"),
            duration_ms=data.get("duration_ms"),
            chars=data.get("chars") or 0,
            relay_offset=data.get("relay_offset") or 0,
        )


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request, once it ended: what the request log keeps (docs/observability.md).

    ``id``: the request's id (the gateway's ``x-request-id``); ``time``: when it ended
    (UTC; it began ``duration_ms`` earlier). ``model`` as requested, ``resolved_model``
    the upstream model that served it (or, when none did, what the name resolved to),
    ``provider`` the entry that served (the last part of) the answer. ``status``:
    ``complete`` (served, no relay), ``switched`` (relayed to another entry mid-answer,
    and completed), ``truncated`` (a cut answer delivered as cut), ``failed`` (nothing
    delivered, or refused), ``cancelled`` (the consumer left first). ``ttft_ms``: from
    the request's start to the first chunk (failed tries included). ``error_type`` and
    ``error``: what it ended with, when not served. ``content``: the messages and the
    answer, only with ``log_content``.
    """

    id: str
    time: datetime
    endpoint: str
    key: str | None
    team: str | None
    model: str
    resolved_model: str | None
    provider: str | None
    status: RecordStatus
    finish_reason: str | None
    ttft_ms: float | None
    duration_ms: float
    usage: TokenCounts
    cost_usd: float | None
    cost_status: CostStatus
    cache: str | None
    error_type: str | None
    error: str | None
    attempts: tuple[AttemptRecord, ...]
    content: Mapping[str, Any] | None = None
    traceparent: str | None = None
    """The labels' ``traceparent``, for tracing; not part of the JSON shape (the
    request log does not keep it)."""

    def as_json(self) -> dict[str, Any]:
        """The record's one JSON shape: what the store keeps, the admin API answers
        and ``polyroute logs --json`` prints (``time`` as RFC 3339 UTC, ``Z``)."""
        return {
            "id": self.id,
            "time": rfc3339(self.time),
            "endpoint": self.endpoint,
            "key": self.key,
            "team": self.team,
            "model": self.model,
            "resolved_model": self.resolved_model,
            "provider": self.provider,
            "status": self.status,
            "finish_reason": self.finish_reason,
            "ttft_ms": self.ttft_ms,
            "duration_ms": self.duration_ms,
            "usage": self.usage.as_json(),
            "cost_usd": self.cost_usd,
            "cost_status": self.cost_status,
            "cache": self.cache,
            "error_type": self.error_type,
            "error": self.error,
            "attempts": [attempt.as_json() for attempt in self.attempts],
            "content": dict(self.content) if self.content is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RequestRecord:
        """A record read back from its JSON shape (raises ``KeyError`` or ``ValueError``
        for a mapping that is not one)."""
        usage = data.get("usage") or {}
        return cls(
            id=data["id"],
            time=datetime.fromisoformat(data["time"]).astimezone(UTC),
            endpoint=data["endpoint"],
            key=data.get("key"),
            team=data.get("team"),
            model=data["model"],
            resolved_model=data.get("resolved_model"),
            provider=data.get("provider"),
            status=data["status"],
            finish_reason=data.get("finish_reason"),
            ttft_ms=data.get("ttft_ms"),
            duration_ms=data["duration_ms"],
            usage=TokenCounts(**{name: int(usage.get(name) or 0) for name in _TOKEN_FIELDS}),
            cost_usd=data.get("cost_usd"),
            cost_status=data["cost_status"],
            cache=data.get("cache"),
            error_type=data.get("error_type"),
            error=data.get("error"),
            attempts=tuple(AttemptRecord.from_json(item) for item in data.get("attempts") or ()),
            content=data.get("content"),
        )


_TOKEN_FIELDS = tuple(TokenCounts.__dataclass_fields__)


class RequestObserver(Protocol):
    """Told of every request a router routes, once, when it ends (``Router(observers=
    [...])`` or :meth:`Router.observe`).

    ``request_ended`` runs on the event loop as the request ends: it must return at
    once (queue the record; never wait on I/O). An exception it raises is logged
    (``observer.failed``) and never reaches the request.
    """

    def request_ended(self, record: RequestRecord) -> None:
        """``record``: the request, as it ended."""
        ...


@dataclass(frozen=True, slots=True)
class RequestStart:
    """A request as it starts, for an observer that watches requests live
    (:class:`RequestWatcher`): its id and labels, the operation (``chat``,
    ``embeddings``), the model as requested and its options (OpenAI's names:
    ``temperature``, ``max_tokens``...; ``dimensions`` for embeddings), and its
    ``time.perf_counter()`` as it started (the clock of its record's times)."""

    request_id: str
    labels: RequestLabels
    operation: str
    model: str
    options: Mapping[str, Any]
    started: float


class AttemptTarget(NamedTuple):
    """Where an attempt goes: the entry's name, the upstream model, the entry's
    provider type (``openai``, ``anthropic``, ``gemini``...) and the URL it posts to,
    when known. (A tuple: one is made per attempt, only when someone watches.)"""

    entry: str
    model: str
    provider_type: str | None
    url: str | None


class RequestWatch(Protocol):
    """One request, watched while it runs (what :meth:`RequestWatcher.watch` returns).

    Every method runs on the event loop, on the request's path, and must return at
    once; an exception is logged (``observer.failed``) and never reaches the request.
    """

    def attempt_started(self, attempt: Attempt, target: AttemptTarget) -> Mapping[str, str]:
        """An attempt begins (``attempt`` is filled in as it runs): the headers to add
        to its upstream request (a ``traceparent`` naming it), or none."""
        ...

    def routing_event(self, event: str, fields: Mapping[str, Any]) -> None:
        """A routing event of the request (``attempt.retry``, ``route.relay``,
        ``route.skip``, ``attempt.hedge``...: docs/reliability.md), as it is logged."""
        ...

    def request_ended(self, record: RequestRecord) -> None:
        """The request ended: told instead of the watcher's own ``request_ended``."""
        ...


class RequestWatcher(RequestObserver, Protocol):
    """An observer that also watches each request live (tracing: its upstream requests
    carry a header naming their span, its routing events become span events). The
    router asks :meth:`watch` as a request starts; the watch, if any, is told what the
    observer would be, and the observer itself is not told of that request."""

    def watch(self, start: RequestStart) -> RequestWatch | None:
        """A watch for the request starting, or ``None`` to be told only as it ends."""
        ...


@dataclass(frozen=True, slots=True)
class Watches:
    """The watches of one request, each with the observer it stands for."""

    pairs: tuple[tuple[RequestObserver, RequestWatch], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def attempt_headers(self, attempt: Attempt, target: AttemptTarget) -> dict[str, str] | None:
        """The headers every watch adds to an attempt's upstream request (``None``: none)."""
        headers: dict[str, str] = {}
        for _, watch in self.pairs:
            try:
                headers.update(watch.attempt_started(attempt, target) or {})
            except Exception as error:  # a watch must never fail its request
                _watch_failed(watch, "attempt_started", error)
        return headers or None

    def routing_event(self, event: str, fields: Mapping[str, Any]) -> None:
        """Tell every watch of a routing event (an :class:`EventLogger` listener)."""
        for _, watch in self.pairs:
            try:
                watch.routing_event(event, fields)
            except Exception as error:  # nor may an event
                _watch_failed(watch, "routing_event", error)

    def stand_in(self, observer: RequestObserver) -> RequestObserver:
        """Whom to tell of the request's end in ``observer``'s place: its watch, if any."""
        return next((watch for seen, watch in self.pairs if seen is observer), observer)


NO_WATCHES = Watches()


def watch_request(
    observers: Sequence[RequestObserver], start: Callable[[], RequestStart]
) -> Watches:
    """Ask each observer that watches requests (:class:`RequestWatcher`) for a watch of
    the request that ``start`` describes (made only if one does). An observer whose
    ``watch`` raises is logged and told at the end as any other."""
    watchers = [observer for observer in observers if callable(getattr(observer, "watch", None))]
    if not watchers:
        return NO_WATCHES
    begun = start()
    pairs: list[tuple[RequestObserver, RequestWatch]] = []
    for observer in watchers:
        try:
            watch = cast(RequestWatcher, observer).watch(begun)
        except Exception as error:  # as for request_ended: never the request's problem
            _watch_failed(observer, "watch", error)
            continue
        if watch is not None:
            pairs.append((observer, watch))
    return Watches(tuple(pairs))


def _watch_failed(who: object, stage: str, error: Exception) -> None:
    _log.warning(
        "observer.failed", observer=type(who).__name__, stage=stage, **describe_error(error)
    )


def build_record(
    *,
    request_id: str,
    labels: RequestLabels,
    endpoint: str,
    model: str,
    resolved_model: str | None,
    provider: str | None,
    status: RecordStatus,
    attempts: Sequence[Attempt],
    cost: Cost,
    started: float,
    error: BaseException | None = None,
    refusal: tuple[str, str] | None = None,
    finish_reason: str | None = None,
    cache: str | None = None,
    content: Callable[[], Mapping[str, Any]] | None = None,
) -> RequestRecord:
    """The record of a request that ended now: the one place a record is made, for
    every operation (and the gateway's refusals). ``started``: the request's
    ``time.perf_counter()`` at its start; ``endpoint``: the operation's, unless the
    labels name one; ``error``: what it ended with, or ``refusal``, the error type and
    message of a request refused before it was routed (the gateway's 401, 403...);
    ``content`` is asked only with ``labels.log_content``."""
    now = time.perf_counter()
    ttft = None
    for attempt in attempts:  # a loop, not next() over a generator: runs per request
        if attempt.ttft_ms is not None:
            ttft = round((attempt.started - started) * 1000 + attempt.ttft_ms, 3)
            break
    failure = None if status in ("complete", "switched", "cancelled") else error
    error_type, message = refusal or (None, None)
    if failure is not None:
        error_type, message = type(failure).__name__, error_text(failure)
    # Positional, in the fields' order: binding 21 keywords costs about 1 us more.
    return RequestRecord(
        request_id,
        datetime.now(UTC),
        labels.endpoint or endpoint,
        labels.key,
        labels.team,
        model,
        resolved_model,
        provider,
        status,
        finish_reason,
        ttft,
        round((now - started) * 1000, 3),
        TokenCounts.of(attempts),
        cost.usd,
        cost.status,
        cache,
        error_type,
        message,
        tuple([AttemptRecord.of(attempt, started) for attempt in attempts]),
        content() if labels.log_content and content is not None else None,
        labels.traceparent,
    )


def record_status(status: str, error: BaseException | None) -> RecordStatus:
    """A stream's status (``RouterStream.status``) as a record names it: ``restarted``
    is a ``switched``; a stream that ended before it had an outcome (``pending``,
    ``streaming``) was ``cancelled`` when it was closed, else ``failed``."""
    named = _STREAM_STATUSES.get(status)
    if named is not None:
        return named
    return "cancelled" if error is None or is_cancellation(error) else "failed"


def is_cancellation(error: BaseException) -> bool:
    """The consumer left (the stream closed, the task cancelled): not a failure."""
    return isinstance(error, GeneratorExit | asyncio.CancelledError)


def error_text(error: BaseException) -> str:
    """An error's message for a record: redacted, and cut at :data:`MAX_ERROR_CHARS`."""
    text = redact(str(error)) or type(error).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def notify(
    observers: Sequence[RequestObserver],
    build: Callable[[], RequestRecord],
    watches: Watches = NO_WATCHES,
) -> None:
    """Build a request's record and hand it to every observer (to its watch of the
    request, in ``watches``, if it has one). Neither a failure to build it nor an
    observer that raises reaches the request: each is logged (``observer.failed``),
    and the other observers are still told."""
    try:
        record = build()
    except Exception as error:  # a record must never fail its request
        _log.warning("observer.failed", stage="build", **describe_error(error))
        return
    for observer in observers:
        try:
            (watches.stand_in(observer) if watches else observer).request_ended(record)
        except Exception as error:  # nor may whoever reads it
            _log.warning(
                "observer.failed",
                request_id=record.id,
                observer=type(observer).__name__,
                **describe_error(error),
            )


def rfc3339(moment: datetime) -> str:
    """``moment`` in UTC as RFC 3339 with microseconds and ``Z``: fixed width, so that
    the text sorts as time does."""
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")
