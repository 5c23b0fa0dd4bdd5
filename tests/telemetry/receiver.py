"""A real OTLP/HTTP receiver on 127.0.0.1, as a collector listens on 4318: ``POST
/v1/traces`` and ``POST /v1/metrics``, protobuf, decoded with the official
``opentelemetry-proto`` package (so the spans are read as any collector reads them)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.upstreams.server import listen

T = TypeVar("T")
KINDS = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client",
         Span.SPAN_KIND_INTERNAL: "internal"}  # fmt: skip


def value_of(value: AnyValue) -> Any:
    """An attribute's value as Python: text, number, bool, or a list of them."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {pair.key: value_of(pair.value) for pair in pairs}


@dataclass
class ReceivedSpan:
    """One span as it arrived: ids in hex, times in ns, attributes as Python values."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    status_code: int
    status_message: str
    resource: dict[str, Any]
    scope: str

    @classmethod
    def of(cls, span: Span, resource: dict[str, Any], scope: str) -> ReceivedSpan:
        return cls(
            name=span.name,
            kind=KINDS.get(span.kind, str(span.kind)),
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_span_id=span.parent_span_id.hex(),
            start_ns=span.start_time_unix_nano,
            end_ns=span.end_time_unix_nano,
            attributes=attributes_of(span.attributes),
            events=[(e.name, e.time_unix_nano, attributes_of(e.attributes)) for e in span.events],
            status_code=span.status.code,
            status_message=span.status.message,
            resource=resource,
            scope=scope,
        )

    @property
    def is_error(self) -> bool:
        return self.status_code == 2  # STATUS_CODE_ERROR

    def event_names(self) -> list[str]:
        return [name for name, _, _ in self.events]


@dataclass
class ReceivedPoint:
    """One histogram data point of a metric: its attributes, count and sum."""

    metric: str
    unit: str
    attributes: dict[str, Any]
    count: int
    sum: float


@dataclass
class OTLPReceiver:
    """Keeps every span and histogram point it is sent; :meth:`wait_for` waits (on an
    event, never a sleep) until what arrived satisfies a test."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)
    exports: int = 0
    port: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The base URL (``telemetry.otlp_endpoint``)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> OTLPReceiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        self.port = await listen(self._runner, self.port)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, found: Callable[[OTLPReceiver], T | None], within: float = 20) -> T:
        """``found(self)`` once it is neither ``None`` nor empty, woken by each export."""
        async with self._changed:
            result = found(self)
            async with asyncio.timeout(within):
                while not result:
                    await self._changed.wait()
                    result = found(self)
        assert result is not None
        return result

    def named(self, prefix: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.name.startswith(prefix)]

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        """``parent``'s children, by start time."""
        found = [s for s in self.spans if s.parent_span_id == parent.span_id and
                 s.trace_id == parent.trace_id]  # fmt: skip
        return sorted(found, key=lambda span: span.start_ns)

    def request_span(self, request_id: str) -> ReceivedSpan | None:
        return next(
            (s for s in self.spans if s.attributes.get("polyroute.request.id") == request_id), None
        )

    async def _traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await _body(request))
        for resource_spans in export.resource_spans:
            resource = attributes_of(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(ReceivedSpan.of(span, resource, scope_spans.scope.name))
        await self._tell()
        return _protobuf(ExportTraceServiceResponse())

    async def _metrics(self, request: web.Request) -> web.Response:
        export = ExportMetricsServiceRequest()
        export.ParseFromString(await _body(request))
        for resource_metrics in export.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    self.points += _points(metric)
        await self._tell()
        return _protobuf(ExportMetricsServiceResponse())

    async def _tell(self) -> None:
        async with self._changed:
            self.exports += 1
            self._changed.notify_all()


def _points(metric: Metric) -> list[ReceivedPoint]:
    if metric.WhichOneof("data") != "histogram":
        return []
    return [
        ReceivedPoint(
            metric.name, metric.unit, attributes_of(point.attributes), point.count, point.sum
        )
        for point in metric.histogram.data_points
    ]


async def _body(request: web.Request) -> bytes:
    assert request.content_type == "application/x-protobuf", request.content_type
    raw = await request.read()
    return gzip.decompress(raw) if request.headers.get("Content-Encoding") == "gzip" else raw


def _protobuf(message: Any) -> web.Response:
    return web.Response(body=message.SerializeToString(), content_type="application/x-protobuf")
