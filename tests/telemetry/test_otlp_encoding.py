"""polyroute/telemetry/otlp.py writes, by hand, the very message the OTLP exporter's own
encoder builds: decoded with the official ``opentelemetry-proto``, the two are equal,
for polyroute's spans and for any attributes; a span it does not cover goes through
the exporter's encoder, to a real receiver."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from polyroute.telemetry.otlp import (
    NotCoveredError,
    RequestSpans,
    SpanData,
    SpanExporter,
    encode_request,
)
from tests.telemetry.receiver import OTLPReceiver

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
RESOURCE = Resource({"service.name": "edge", "deployment.environment.name": "test"})
SCOPE = InstrumentationScope("polyroute", "0.1.0")


def _span(
    span_id: int,
    *,
    parent: SpanContext | None = None,
    attributes: dict[str, Any] | None = None,
    resource: Resource = RESOURCE,
    scope: InstrumentationScope | None = SCOPE,
    **extra: Any,
) -> ReadableSpan:
    return ReadableSpan(
        f"span {span_id}",
        SpanContext(TRACE, span_id, False, SAMPLED),
        parent,
        resource,
        attributes,
        start_time=1_700_000_000_000_000_000 + span_id,
        end_time=1_700_000_000_500_000_000 + span_id,
        instrumentation_scope=scope,
        **extra,
    )


def _same_as_the_exporters(spans: list[ReadableSpan]) -> None:
    ours = ExportTraceServiceRequest.FromString(encode_request(spans))
    assert ours == encode_spans(spans)


def test_polyroutes_spans_encode_as_the_exporter_encodes_them() -> None:
    remote = SpanContext(TRACE, 0xB7AD6B7169203331, True, SAMPLED, TraceState([("v", "1")]))
    request_context = SpanContext(TRACE, 0x1111, False, SAMPLED)
    request = _span(
        0x1111,
        parent=remote,
        attributes={"polyroute.request.id": "req-1", "polyroute.attempts": 2,
                    "polyroute.cost_usd": 0.00125, "http.route": "/v1/chat/completions"},
        events=[Event("attempt.retry", {"delay_s": 0.5, "retry": 1, "retryable": True}, 42),
                Event("route.relay", {}, 43)],
        kind=SpanKind.SERVER,
        status=Status(StatusCode.ERROR, "every provider failed: é, ✓"),
    )  # fmt: skip
    attempt = _span(
        0x2222,
        parent=request_context,
        attributes={"gen_ai.response.finish_reasons": ["stop"], "gen_ai.usage.input_tokens": 0,
                    "polyroute.offset": -3, "flag": False, "raw": b"\x00\x01"},
        kind=SpanKind.CLIENT,
        status=Status(StatusCode.OK),
    )  # fmt: skip
    root = _span(0x3333)
    other = _span(0x4444, resource=Resource({"service.name": "other"}), scope=None)
    _same_as_the_exporters([request, attempt, root, other])


def test_a_requests_spans_encode_as_the_exporter_encodes_them_as_sdk_spans() -> None:
    # What the pipeline queues per request: a server span continuing a remote parent,
    # failed, with events; an attempt that failed with no message; one that served.
    remote_parent = 0xB7AD6B7169203331
    request = SpanData(
        "POST /v1/chat/completions", TRACE, 0x1111, remote_parent, True, 2,
        1_700_000_000_000_000_000, 1_700_000_000_500_000_000,
        {"polyroute.request.id": "req-1", "polyroute.attempts": 2, "polyroute.cost_usd": 0.5},
        [("attempt.retry", 42, {"delay_s": 0.5, "retry": 1}), ("route.relay", 43, {})],
        "every provider failed: é",
    )  # fmt: skip
    failed = SpanData(
        "chat m", TRACE, 0x2222, 0x1111, False, 3, 1_700_000_000_000_000_001,
        1_700_000_000_100_000_000, {"error.type": "UpstreamError", "server.port": 8000}, (), "",
    )  # fmt: skip
    served = SpanData(
        "chat m", TRACE, 0x3333, 0x1111, False, 3, 1_700_000_000_100_000_001,
        1_700_000_000_400_000_000,
        {"gen_ai.response.finish_reasons": ["stop"], "gen_ai.usage.input_tokens": 12}, (), None,
    )  # fmt: skip
    library = SpanData("chat m", TRACE, 0x4444, None, False, 1, 5, 6, {}, (), None)
    spans = RequestSpans([request, failed, served, library], RESOURCE, SCOPE)
    ours = ExportTraceServiceRequest.FromString(encode_request([spans]))
    assert ours == encode_spans(spans.readable())
    # Made when first read (in the exporter's thread), once: the same bytes.
    made: list[int] = []

    def make() -> list[SpanData]:
        made.append(1)
        return [request, failed, served, library]

    later = RequestSpans(make, RESOURCE, SCOPE)
    assert made == []
    assert encode_request([later]) == encode_request([spans])
    assert len(later.readable()) == 4
    assert made == [1]

    def broken() -> list[SpanData]:
        raise ValueError("a bug in one request's spans")

    # One request's spans that cannot be made are left out, not the batch with them.
    assert encode_request([RequestSpans(broken, RESOURCE, SCOPE), spans]) == encode_request([spans])


texts = st.text(max_size=40)
values = st.one_of(
    texts,
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.lists(texts, max_size=4),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4),
    st.binary(max_size=8),
)


@given(st.dictionaries(texts, values, max_size=12))
def test_any_attributes_encode_as_the_exporter_encodes_them(attributes: dict[str, Any]) -> None:
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in attributes.values())
    event = Event("e", attributes, 7)
    _same_as_the_exporters([_span(0x5555, attributes=attributes, events=[event])])


async def test_a_span_it_does_not_cover_goes_through_the_exporters_encoder(
    receiver: OTLPReceiver,
) -> None:
    linked = _span(0x6666, links=[Link(SpanContext(TRACE, 0x7777, False, SAMPLED))])
    try:
        encode_request([linked])
    except NotCoveredError:
        pass
    else:
        raise AssertionError("links are not the hand encoder's")
    exporter = SpanExporter(endpoint=f"{receiver.url}/v1/traces", timeout=5)
    try:
        result = await asyncio.to_thread(exporter.export, [linked, _span(0x8888)])
    finally:
        exporter.shutdown()
    assert result.name == "SUCCESS"
    assert [span.name for span in receiver.spans] == ["span 26214", "span 34952"]
