"""OTLP/HTTP export of spans, encoded by hand.

The exporter's own encoder (opentelemetry-exporter-otlp-proto-common) builds a protobuf
object for every attribute of every span: about 65 us for one of polyroute's spans
(measured; 10 attributes), on the gateway's CPU, twice or more per request. This module
writes the same bytes directly (the OTLP protobuf wire format: a few dozen lines, and
the tests' receiver reads them back with the official ``opentelemetry-proto``), in
about a quarter of that. Everything else is the SDK's ``OTLPSpanExporter``: the
endpoint, headers, timeout, compression and retries, from the standard variables. A
span this encoder does not cover (links, dropped attributes: never polyroute's) is
encoded by the exporter's own encoder.

polyroute's own spans do not reach it as SDK spans: the pipeline queues one
:class:`RequestSpans` per request (its spans as :class:`SpanData` tuples) to the SDK's
batch span processor, which only asks whether it is sampled. Two ``ReadableSpan`` s, their
contexts and statuses cost the event loop about 12 us a request (measured), and the
encoder read them back through properties; a tuple is made in a microsecond.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from polyroute.core.errors import describe_error
from polyroute.core.logging import get_logger

_log = get_logger()

_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
"""``SpanFlags``: the parent's remoteness is known; the parent is remote."""
_KEYS: dict[str, bytes] = {}
"""A KeyValue's key, encoded (field 1), by key: attribute names are few."""
_KEYS_MAX = 4096
_PAIRS: dict[tuple[int, str, str | bool | tuple[str, ...]], bytes] = {}
"""Text, boolean and tuple-of-text attributes, encoded as a field with their tag, by tag,
key and value."""
_PAIRS_MAX = 16384
_NUMBERS: dict[tuple[int, str, int], bytes] = {}
"""Whole-number attributes likewise (apart: ``True == 1`` as a key)."""
_SAMPLED = SpanContext(0, 0, False, TraceFlags(TraceFlags.SAMPLED))
_KINDS = {kind.value + 1: kind for kind in SpanKind}  # OTLP's kinds count from 1


class NotCoveredError(Exception):
    """A span with something the hand encoder does not write."""


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return bytes((value,))
    if value < 0:
        value += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2); ``tag`` is ``field << 3 | 2``."""
    size = len(payload)
    if size < 0x80:
        return bytes((tag, size)) + payload
    return bytes((tag,)) + _varint(size) + payload


def _text(tag: int, text: str) -> bytes:
    return _delimited(tag, text.encode())


def _value(value: Any) -> bytes:
    """An ``AnyValue``'s fields."""
    if isinstance(value, str):
        return _text(0x0A, value)
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, bytes):
        return _delimited(0x3A, value)
    if isinstance(value, Sequence):
        return _delimited(0x2A, b"".join(_delimited(0x0A, _value(item)) for item in value))
    raise NotCoveredError(f"attribute value of type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        encoded = _KEYS[key] = _text(0x0A, key)
    return encoded + _delimited(0x12, _value(value))


def _attributes(tag: int, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated ``KeyValue`` fields. A text or boolean attribute is kept encoded, by
    key and value: most repeat from request to request (models, entries, statuses)."""
    if not attributes:
        return b""
    out = []
    for key, value in attributes.items():
        kind = type(value)
        if (
            kind is str
            or kind is bool
            or (kind is tuple and all(type(item) is str for item in value))  # finish reasons
        ):
            pair = (tag, key, value)
            encoded = _PAIRS.get(pair)
            if encoded is None:
                if len(_PAIRS) >= _PAIRS_MAX:
                    _PAIRS.clear()  # a bound, not an eviction policy: refilled at once
                encoded = _PAIRS[pair] = _delimited(tag, _key_value(key, value))
            out.append(encoded)
        elif kind is int:
            number = (tag, key, value)
            encoded = _NUMBERS.get(number)
            if encoded is None:
                if len(_NUMBERS) >= _PAIRS_MAX:
                    _NUMBERS.clear()
                encoded = _NUMBERS[number] = _delimited(tag, _key_value(key, value))
            out.append(encoded)
        else:
            out.append(_delimited(tag, _key_value(key, value)))
    return b"".join(out)


def encode_span(span: ReadableSpan) -> bytes:
    """One ``Span`` message's fields."""
    if span.links or span.dropped_attributes or span.dropped_events:
        raise NotCoveredError("links or dropped attributes")
    context, parent = span.context, span.parent
    if context is None or span.start_time is None or span.end_time is None:
        raise NotCoveredError("a span without context or times")
    out = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        out.append(_text(0x1A, ",".join(f"{k}={v}" for k, v in context.trace_state.items())))
    if parent is not None:
        out.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    out.append(_text(0x2A, span.name))
    out.append(b"\x30" + _varint(span.kind.value + 1))  # OTLP's kinds count from 1
    out.append(b"\x39" + struct.pack("<Q", span.start_time))
    out.append(b"\x41" + struct.pack("<Q", span.end_time))
    out.append(_attributes(0x4A, span.attributes))
    for event in span.events:
        fields = b"\x09" + struct.pack("<Q", event.timestamp) + _text(0x12, event.name)
        out.append(_delimited(0x5A, fields + _attributes(0x1A, event.attributes)))
    status, code = span.status, span.status.status_code.value
    message = _text(0x12, status.description) if status.description else b""
    out.append(_delimited(0x7A, message + (b"\x18" + _varint(code) if code else b"")))
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    out.append(b"\x85\x01" + struct.pack("<I", flags))  # field 16, fixed32
    return b"".join(out)


class SpanData(NamedTuple):
    """A finished span of polyroute's, as the encoder writes it (no trace state, no
    links: polyroute's spans have none)."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int | None
    parent_remote: bool
    kind: int
    """OTLP's ``SpanKind``: the SDK's value plus one (``SERVER`` is 2)."""
    start: int
    end: int
    attributes: Mapping[str, Any]
    events: Sequence[tuple[str, int, Mapping[str, Any]]]
    """Each event's name, time (ns) and attributes."""
    error: str | None
    """The status: ``ERROR`` with this message (``""``: none) when not ``None``."""


class RequestSpans:
    """One request's spans, as one item of the SDK's batch span processor (which asks
    only ``context.trace_flags.sampled``: a request is queued only when sampled).
    ``spans``: the spans, or what makes them, called once when they are first read: in
    the exporter's thread, with its batch, rather than on the event loop as each
    request ends (the same work runs about twice as fast in a batch)."""

    __slots__ = ("_made", "_make", "instrumentation_scope", "resource")
    context = _SAMPLED

    def __init__(
        self,
        spans: list[SpanData] | Callable[[], list[SpanData]],
        resource: Resource,
        scope: InstrumentationScope,
    ) -> None:
        self._made: list[SpanData] | None = None
        self._make: Callable[[], list[SpanData]] | None = None
        if isinstance(spans, list):
            self._made = spans
        else:
            self._make = spans
        self.resource = resource
        self.instrumentation_scope = scope

    @property
    def spans(self) -> list[SpanData]:
        if self._make is not None:
            make, self._make = self._make, None
            try:
                self._made = make()
            except Exception as error:  # one request's spans lost, not its whole batch
                _log.warning("telemetry.spans_failed", **describe_error(error))
                self._made = []
        return self._made or []

    def readable(self) -> list[ReadableSpan]:
        """The same spans as the SDK's, for the exporter's own encoder."""
        sampled = TraceFlags(TraceFlags.SAMPLED)
        out = []
        for span in self.spans:
            parent = None
            if span.parent_id is not None:
                parent = SpanContext(span.trace_id, span.parent_id, span.parent_remote, sampled)
            error = span.error
            out.append(
                ReadableSpan(
                    span.name,
                    SpanContext(span.trace_id, span.span_id, False, sampled),
                    parent,
                    self.resource,
                    dict(span.attributes),
                    [Event(name, attributes, at) for name, at, attributes in span.events],
                    kind=_KINDS[span.kind],
                    status=Status(StatusCode.ERROR, error or None)
                    if error is not None
                    else Status(StatusCode.UNSET),
                    start_time=span.start,
                    end_time=span.end,
                    instrumentation_scope=self.instrumentation_scope,
                )
            )
        return out


def encode_data(span: SpanData) -> bytes:
    """One ``Span`` message's fields, as :func:`encode_span` writes them."""
    out = [
        b"\x0a\x10" + span.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + span.span_id.to_bytes(8, "big"),
    ]
    if span.parent_id is not None:
        out.append(b"\x22\x08" + span.parent_id.to_bytes(8, "big"))
    out.append(_text(0x2A, span.name))
    out.append(b"\x30" + _varint(span.kind))
    out.append(_TIMES.pack(0x39, span.start, 0x41, span.end))
    out.append(_attributes(0x4A, span.attributes))
    for name, at, attributes in span.events:
        fields = b"\x09" + struct.pack("<Q", at) + _text(0x12, name)
        out.append(_delimited(0x5A, fields + _attributes(0x1A, attributes)))
    if span.error is None:
        out.append(b"\x7a\x00")
    else:
        out.append(_delimited(0x7A, (_text(0x12, span.error) if span.error else b"") + b"\x18\x02"))
    out.append(_REMOTE_FLAGS if span.parent_id is not None and span.parent_remote else _FLAGS)
    return b"".join(out)


_TIMES = struct.Struct("<BQBQ")
"""A span's start and end: two fixed64 fields with their tags."""
_FLAGS = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)
_REMOTE_FLAGS = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)


def _resource(resource: Resource) -> bytes:
    return _attributes(0x0A, resource.attributes)


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    fields = _text(0x0A, scope.name) + (_text(0x12, scope.version) if scope.version else b"")
    return fields + _attributes(0x1A, scope.attributes)


def _scope_spans(scope: InstrumentationScope | None, spans: list[bytes]) -> bytes:
    body = _delimited(0x0A, _scope(scope)) + b"".join(_delimited(0x12, span) for span in spans)
    if scope is not None and scope.schema_url:
        body += _text(0x1A, scope.schema_url)
    return body


_Scopes = dict[int, tuple[InstrumentationScope | None, list[bytes]]]
"""A resource's spans, encoded, by their scope's identity."""


def encode_request(spans: Sequence[ReadableSpan | RequestSpans]) -> bytes:
    """An ``ExportTraceServiceRequest`` of ``spans`` (a :class:`RequestSpans` counts as
    its spans), grouped by resource and scope as the exporter's own encoder groups
    them. Raises :class:`NotCoveredError`."""
    # By identity, not equality: a Resource hashes by dumping its attributes as JSON,
    # and a scope by formatting its fields, per span. (Equal ones apart are two groups:
    # still one valid request.)
    grouped: dict[int, tuple[Resource, _Scopes]] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope
        _, scopes = grouped.setdefault(id(resource), (resource, {}))
        _, encoded = scopes.setdefault(id(scope), (scope, []))
        if isinstance(span, RequestSpans):
            encoded += [encode_data(data) for data in span.spans]
        else:
            encoded.append(encode_span(span))
    out = []
    for resource, scopes in grouped.values():
        scope_spans = b"".join(
            _delimited(0x12, _scope_spans(scope, encoded)) for scope, encoded in scopes.values()
        )
        body = _delimited(0x0A, _resource(resource)) + scope_spans
        if resource.schema_url:
            body += _text(0x1A, resource.schema_url)
        out.append(_delimited(0x0A, body))
    return b"".join(out)


class SpanExporter(OTLPSpanExporter):
    """``OTLPSpanExporter``, encoding with :func:`encode_request` (and taking
    :class:`RequestSpans` as well as SDK spans)."""

    def export(self, spans: Sequence[ReadableSpan | RequestSpans]) -> SpanExportResult:
        client = getattr(self, "_client", None)  # the SDK's, pinned by the otel extra
        if client is None or getattr(self, "_shutdown", True):
            return super().export(readable(spans))
        try:
            data = encode_request(spans)
        except NotCoveredError:
            return super().export(readable(spans))
        if client.export(data).success:
            return SpanExportResult.SUCCESS
        return SpanExportResult.FAILURE


def readable(spans: Sequence[ReadableSpan | RequestSpans]) -> list[ReadableSpan]:
    """``spans`` as SDK spans only, for the exporter's own encoder."""
    out: list[ReadableSpan] = []
    for span in spans:
        out += span.readable() if isinstance(span, RequestSpans) else [span]
    return out
