"""The GenAI metrics (``gen_ai.client.operation.duration``, ``gen_ai.client.token.usage``),
aggregated by polyroute and exported by the SDK's periodic reader and OTLP exporter.

The SDK's ``Histogram.record`` cleans and hashes the measure's attributes on every call:
11 us a measure (measured with five attributes; 3 measures a request, over 60 us with
the attributes built for it). Here a measure is a dict lookup by a tuple of the
attributes' values and a bisect, about 1 us; the attributes are made into a mapping
once per distinct set, at export. The SDK still does the rest: the export interval and
the exporter's settings (``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_EXPORTER_OTLP_*``), its
thread, retries, flush and shutdown. Temporality is cumulative (the OTLP exporter's
default), from the pipeline's start.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, cast

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from polyroute.router.observe import AttemptRecord
from polyroute.telemetry.attributes import PROVIDER_NAMES, SeenAttempt, server_of

DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                    20.48, 40.96, 81.92)  # fmt: skip
"""Seconds: the GenAI conventions' advice for ``gen_ai.client.operation.duration``."""
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip
"""Tokens: the conventions' advice for ``gen_ai.client.token.usage``."""
METRIC_NAMES = ("gen_ai.operation.name", "gen_ai.request.model", "gen_ai.provider.name",
                "server.address", "gen_ai.response.model", "error.type")  # fmt: skip
"""The attributes of an attempt's measures, in the order of its key's values (``None``:
not set). The conventions' own, each of few values (no ids, no counts, no port)."""

Key = tuple[str | None, ...]


class HistogramBook:
    """One histogram's points, by attribute values (:data:`METRIC_NAMES`' order, then
    any ``extra`` names). :meth:`record` runs on the event loop, :meth:`metric` in the
    reader's thread: a lock between them."""

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        bounds: Sequence[float],
        extra: tuple[str, ...] = (),
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        self._bounds = tuple(float(bound) for bound in bounds)
        self._names = METRIC_NAMES + extra
        self._points: dict[Key, list[Any]] = {}
        """key -> [bucket counts, sum, count, min, max]"""
        self._lock = threading.Lock()

    def record(self, value: float, key: Key) -> None:
        with self._lock:
            point = self._points.get(key)
            if point is None:
                point = self._points[key] = [[0] * (len(self._bounds) + 1), 0, 0, value, value]
            point[0][bisect_left(self._bounds, value)] += 1
            point[1] += value
            point[2] += 1
            if value < point[3]:
                point[3] = value
            elif value > point[4]:
                point[4] = value

    def metric(self, start_ns: int, now_ns: int) -> Metric | None:
        """The points so far (cumulative), or ``None`` before the first measure."""
        with self._lock:
            points = [(key, list(p[0]), p[1], p[2], p[3], p[4]) for key, p in self._points.items()]
        if not points:
            return None
        data = [
            HistogramDataPoint(
                attributes={n: v for n, v in zip(self._names, key, strict=True) if v is not None},
                start_time_unix_nano=start_ns,
                time_unix_nano=now_ns,
                count=count,
                sum=total,
                bucket_counts=counts,
                explicit_bounds=self._bounds,
                min=least,
                max=most,
            )
            for key, counts, total, count, least, most in points
        ]
        histogram = Histogram(data, AggregationTemporality.CUMULATIVE)
        return Metric(self.name, self.description, self.unit, histogram)


class GenAIMetrics:
    """``gen_ai.client.operation.duration`` and ``gen_ai.client.token.usage``: one
    measure per attempt (each is one call to a model), collected by ``reader``."""

    def __init__(
        self, resource: Resource, scope: InstrumentationScope, reader: MetricReader
    ) -> None:
        self.duration = HistogramBook(
            "gen_ai.client.operation.duration", "s", "GenAI operation duration",
            DURATION_BUCKETS,
        )  # fmt: skip
        self.tokens = HistogramBook(
            "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used",
            TOKEN_BUCKETS, ("gen_ai.token.type",),
        )  # fmt: skip
        self._resource, self._scope = resource, scope
        self._start_ns = time.time_ns()
        # The reader's one link to its data, set as a MeterProvider sets it (the SDK's
        # hint names a temporality; it passes ``timeout_millis``, and skips a None).
        reader._set_collect_callback(cast(Any, self._collect))

    def record(
        self, operation: str, attempts: Sequence[AttemptRecord], seen: Sequence[SeenAttempt | None]
    ) -> None:
        for attempt, saw in zip(attempts, seen, strict=True):
            key = metric_key(operation, attempt, saw)
            if attempt.duration_ms is not None:
                self.duration.record(attempt.duration_ms / 1000, key)
            usage = saw.attempt.usage if saw is not None else None
            if usage is None:
                continue
            self.tokens.record(usage.prompt_tokens, (*key, "input"))
            if operation != "embeddings":
                self.tokens.record(usage.completion_tokens, (*key, "output"))

    def _collect(self, _reader: MetricReader, timeout_millis: float = 10_000) -> MetricsData | None:
        now = time.time_ns()
        made = [book.metric(self._start_ns, now) for book in (self.duration, self.tokens)]
        metrics = [metric for metric in made if metric is not None]
        if not metrics:
            return None
        scoped = ScopeMetrics(self._scope, metrics, self._scope.schema_url or "")
        resource = ResourceMetrics(self._resource, [scoped], self._resource.schema_url)
        return MetricsData([resource])


def metric_key(operation: str, attempt: AttemptRecord, seen: SeenAttempt | None) -> Key:
    """An attempt's measures' attribute values, in :data:`METRIC_NAMES`' order."""
    target = seen.target if seen is not None else None
    provider = address = None
    if target is not None:
        kind = target.provider_type
        provider = PROVIDER_NAMES.get(kind, kind) if kind is not None else None
        server = server_of(target.url) if target.url else None
        address = server[0] if server is not None else None
    answered = attempt.model if attempt.ttft_ms is not None else None
    return (operation, attempt.model, provider, address, answered, attempt.error_type)
