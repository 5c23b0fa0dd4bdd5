"""The OpenTelemetry SDK's side of tracing (the ``otel`` extra): the exporters, a watch
per request, and the spans and metrics made when it ends.

A request's spans are made once it ended, from its record, with the start and end times
it had: no OpenTelemetry call runs per chunk, and none but a few id draws while the
request runs. Only the ids are settled live. As a request starts, its watch
(:class:`RequestTrace`) draws its trace id (or takes the client's ``traceparent``) and
its span id, and as each attempt starts, that attempt's span id, which goes upstream in
the attempt's ``traceparent``. At the end, the spans are finished ``ReadableSpan`` s
with exactly those ids, handed to the SDK's batch span processor: a tracer would draw
ids of its own, and clean every attribute again (measured: half of a span's cost).
Export runs in the SDK's background threads (the batch span processor, a periodic
metric reader): its failures are logged by the SDK and never reach a request.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from polyroute.core.attempts import Attempt
from polyroute.router.observe import AttemptRecord, AttemptTarget, RequestRecord, RequestStart
from polyroute.telemetry.attributes import (
    ROUTING_EVENTS,
    SERVER_ROUTES,
    SeenAttempt,
    attempt_attributes,
    attempt_name,
    event_attributes,
    operation_of,
    request_attributes,
    request_name,
)
from polyroute.telemetry.config import TelemetryConfig
from polyroute.telemetry.metrics import GenAIMetrics
from polyroute.telemetry.otlp import RequestSpans, SpanData, SpanExporter

SCOPE = "polyroute"
"""The instrumentation scope of polyroute's spans and metrics."""
_PROPAGATOR = TraceContextTextMapPropagator()
_SERVER, _INTERNAL, _CLIENT = (kind.value + 1 for kind in (SpanKind.SERVER, SpanKind.INTERNAL,
                                                           SpanKind.CLIENT))  # fmt: skip
"""OTLP's kinds (counting from 1, the SDK's from 0)."""


class Pipeline:
    """A tracer provider and a meter provider of polyroute's own (never the global
    ones: nothing of another library's set-up changes), exporting over OTLP/HTTP as
    ``config`` says. ``server``: requests are a gateway's (``SERVER`` spans)."""

    def __init__(self, config: TelemetryConfig, *, server: bool = False) -> None:
        from polyroute import __version__  # here: the package imports this module's user

        self.resource = _resource(config)
        sampler: Sampler | None = None
        self.ratio: TraceIdRatioBased | None = None
        """The root sampler of ``sample_ratio``, when set (not from the environment)."""
        if config.sample_ratio is not None:
            self.ratio = TraceIdRatioBased(config.sample_ratio)
            sampler = ParentBased(self.ratio)
        # The provider reads the sampler from the environment when none is given
        # (OTEL_TRACES_SAMPLER), and flushes and stops the processor with the others.
        self.traces = TracerProvider(
            resource=self.resource, sampler=sampler, shutdown_on_exit=False
        )
        self.processor = BatchSpanProcessor(SpanExporter(endpoint=config.signal_url("traces")))
        self.traces.add_span_processor(self.processor)
        self.scope = InstrumentationScope(SCOPE, __version__)
        self.meters = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=config.signal_url("metrics"))
        )
        self.metrics = GenAIMetrics(self.resource, self.scope, self.meters)
        self.sampler = self.traces.sampler
        self.ids = RandomIdGenerator()
        self.server = server
        self.disabled = os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"
        """The standard switch: no span, no metric (the SDK's providers obey it too)."""

    # A request, live and once it ended ----------------------------------------------

    def watch(self, start: RequestStart) -> RequestTrace:
        """The watch of a request that starts now."""
        name = _start_name(start, self.server)
        options = start.options
        return RequestTrace(
            self, start.labels.traceparent, name, options, start.started, follow_current=True
        )

    def record(self, record: RequestRecord, trace: RequestTrace | None) -> None:
        """A request ended: its metrics, and its spans when its trace is sampled
        (``trace``: its watch; ``None`` for a record nobody watched, such as a
        gateway's refusal)."""
        if self.disabled:
            return
        operation = operation_of(record.endpoint)
        seen = _matched(record.attempts, trace.attempts if trace is not None else [])
        self.metrics.record(operation, record.attempts, seen)
        if trace is None:
            name = request_name(record, self.server)
            # Nobody watched it run: no routing event to time, so no start to count from.
            trace = RequestTrace(self, record.traceparent, name, {}, 0.0, follow_current=False)
        if trace.sampled:
            events = tuple(trace.events)  # as they are now: nothing is added after the end
            spans = RequestSpans(
                lambda: self._spans(record, trace, operation, seen, events),
                self.resource,
                self.scope,
            )
            # The processor takes it as a span: it only asks whether it is sampled.
            self.processor.on_end(cast(ReadableSpan, spans))

    def _spans(
        self,
        record: RequestRecord,
        trace: RequestTrace,
        operation: str,
        seen: Sequence[SeenAttempt | None],
        events: Sequence[tuple[str, int, Mapping[str, Any]]],
    ) -> list[SpanData]:
        """The request's span and a child per attempt, with the times they had (made
        and encoded in the exporter's thread, from what the request ended with)."""
        end = int(record.time.timestamp() * 1e9)
        start = end - int(record.duration_ms * 1e6)
        trace_id, request_id = trace.trace_id, trace.span_id
        failed = record.status in ("failed", "truncated")
        span_events = [
            (name, start + offset, event_attributes(fields)) for name, offset, fields in events
        ]
        spans = [
            SpanData(
                request_name(record, self.server),
                trace_id,
                request_id,
                trace.parent_id,
                trace.parent_remote,
                _SERVER if self.server else _INTERNAL,
                start,
                end,
                request_attributes(record, self.server),
                span_events,
                (record.error or "") if failed else None,
            )
        ]
        for attempt, saw in zip(record.attempts, seen, strict=True):
            began = start + int(attempt.started_ms * 1e6)
            failed = attempt.outcome == "failed"
            spans.append(
                SpanData(
                    attempt_name(operation, attempt),
                    trace_id,
                    saw.span_id if saw is not None else self.ids.generate_span_id(),
                    request_id,
                    False,
                    _CLIENT,
                    began,
                    min(end, began + int((attempt.duration_ms or 0.0) * 1e6)),
                    attempt_attributes(operation, attempt, saw, trace.options),
                    (),
                    (attempt.error or "") if failed else None,
                )
            )
        return spans

    # The providers -------------------------------------------------------------------

    def force_flush(self, timeout_s: float) -> bool:
        """Export what waits now (blocks: run it off the event loop)."""
        millis = int(timeout_s * 1000)
        return bool(self.traces.force_flush(millis)) and self.meters.force_flush(millis)

    def shutdown(self) -> None:
        """Export what waits, then stop the exporters' threads (blocks)."""
        self.traces.shutdown()
        self.meters.shutdown()


class RequestTrace:
    """One request's trace, settled as it starts: the trace it belongs to (the
    client's ``traceparent``, else with ``follow_current`` the caller's current span,
    else a new trace), its span's id, whether it is sampled; then each attempt's span
    id as it starts, and the routing events as they happen (a
    :class:`~polyroute.router.observe.RequestWatch`)."""

    __slots__ = ("_pipeline", "attempts", "events", "options", "parent_id", "parent_remote",
                 "sampled", "span_id", "started", "trace_id")  # fmt: skip

    def __init__(
        self,
        pipeline: Pipeline,
        traceparent: str | None,
        name: str,
        options: Mapping[str, Any],
        started: float,
        *,
        follow_current: bool,
    ) -> None:
        self._pipeline = pipeline
        self.options = options
        self.started = started
        """The request's ``time.perf_counter()`` at its start: its events' times count
        from it, on the clock its record's times and its spans' come from."""
        context = _parent(traceparent, follow_current)
        parent = trace_api.get_current_span(context).get_span_context()
        ids = pipeline.ids
        self.parent_id = parent.span_id if parent.is_valid else None
        self.parent_remote = parent.is_remote
        self.trace_id = parent.trace_id if parent.is_valid else ids.generate_trace_id()
        self.span_id = ids.generate_span_id()
        ratio = pipeline.ratio
        if ratio is not None and not parent.is_valid:
            # What ParentBased(TraceIdRatioBased) decides for a root, without the
            # SamplingResult it makes (about 3 us a request, measured).
            sampled = self.trace_id & ratio.TRACE_ID_LIMIT < ratio.bound
        else:
            kind = SpanKind.SERVER if pipeline.server else SpanKind.INTERNAL
            decision = pipeline.sampler.should_sample(context, self.trace_id, name, kind)
            sampled = decision.decision is Decision.RECORD_AND_SAMPLE  # is_sampled(), typed
        self.sampled = sampled and not pipeline.disabled
        self.attempts: list[SeenAttempt] = []
        self.events: list[tuple[str, int, Mapping[str, Any]]] = []
        """Each routing event, with its time in nanoseconds from the request's start."""

    def attempt_started(self, attempt: Attempt, target: AttemptTarget) -> Mapping[str, str]:
        """The attempt's span id, drawn now and named in its upstream ``traceparent``."""
        span_id = self._pipeline.ids.generate_span_id()
        self.attempts.append(SeenAttempt(attempt, target, span_id))
        flags = "01" if self.sampled else "00"
        return {"traceparent": f"00-{self.trace_id:032x}-{span_id:016x}-{flags}"}

    def routing_event(self, event: str, fields: Mapping[str, Any]) -> None:
        """Kept with its time, to become an event of the request's span. Timed on the
        clock of the spans' times, not the wall clock: a span's times are the record's
        end less durations, and the wall clock read apart from it (a process paused
        between the two) put a retry's event 1.3 ms before its failed attempt ended."""
        if self.sampled and event in ROUTING_EVENTS:
            elapsed = int((time.perf_counter() - self.started) * 1e9)
            self.events.append((event, elapsed, fields))

    def request_ended(self, record: RequestRecord) -> None:
        self._pipeline.record(record, self)


def _resource(config: TelemetryConfig) -> Resource:
    """The SDK's resource (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME), named by
    ``service_name`` when set, ``polyroute`` when nothing names it."""
    resource = Resource.create()
    name = config.service_name
    if name is None and str(resource.attributes.get(SERVICE_NAME, "")).startswith(
        "unknown_service"
    ):
        name = "polyroute"
    return resource.merge(Resource({SERVICE_NAME: name})) if name is not None else resource


def _parent(traceparent: str | None, follow_current: bool) -> context_api.Context:
    """The context a request's span starts in: the client's trace (a ``traceparent``
    that does not parse is ignored, as W3C asks), else the caller's current span."""
    if traceparent:
        continued = _PROPAGATOR.extract({"traceparent": traceparent}, context_api.Context())
        if trace_api.get_current_span(continued).get_span_context().is_valid:
            return continued
    if follow_current:
        current = trace_api.get_current_span()
        if current.get_span_context().is_valid:
            return trace_api.set_span_in_context(current, context_api.Context())
    return context_api.Context()


def _start_name(start: RequestStart, server: bool) -> str:
    """The request span's name as it starts (what a sampler is shown)."""
    route = SERVER_ROUTES.get(start.labels.endpoint or "") if server else None
    return f"POST {route}" if route is not None else f"{start.operation} {start.model}"


def _matched(
    attempts: Sequence[AttemptRecord], seen: Sequence[SeenAttempt]
) -> list[SeenAttempt | None]:
    """What the watch saw of each attempt of the record: the same attempts in the same
    order (the router tells the watch as it adds each one to the request's list)."""
    matched: list[SeenAttempt | None] = []
    for index, attempt in enumerate(attempts):
        saw = seen[index] if index < len(seen) else None
        if saw is not None and saw.attempt.provider != attempt.provider:
            saw = None  # never expected; a span with a fresh id beats one misnamed
        matched.append(saw)
    return matched
