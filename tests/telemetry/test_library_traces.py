"""OpenTelemetry from the library (issue 26, parts 2 and 3): a router with a ``Tracing``
observer exports, to a real OTLP/HTTP receiver, an INTERNAL span per request and a
CLIENT span per attempt with the GenAI attributes; retries, relays and skips are
events of the request's span; the upstream's ``traceparent`` names the attempt's span;
a client's trace is continued; content only with ``log_content``; a collector that is
down never reaches a request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from polyroute import RequestLabels, Router, Tracing
from tests.telemetry.receiver import OTLPReceiver, ReceivedSpan
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script
from tests.upstreams.server import RecordedRequest

HI = [{"role": "user", "content": "Hi"}]
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
Make = Callable[..., Tracing]


def _entry(name: str, server: OpenAIUpstream, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "base_url": server.base_url, "models": ["m"],
            **extra}  # fmt: skip


def _router(tracing: Tracing, *entries: dict[str, Any], **settings: Any) -> Router:
    config = {"providers": list(entries), "retry": {"attempts": 2, "backoff_initial": 0},
              **settings}  # fmt: skip
    return Router.from_config(config, observers=[tracing])


async def _answer(router: Router, **params: Any) -> str:
    async with router.stream("m", HI, **params) as stream:
        return "".join([text async for text in stream])


async def _exported(tracing: Tracing) -> None:
    """Export what waits (off the loop, which serves the receiver meanwhile)."""
    assert await asyncio.to_thread(tracing.force_flush, 10.0)


def _traceparent(upstream_request: RecordedRequest) -> tuple[str, str, str]:
    """The trace id, span id and flags of the traceparent an upstream received."""
    version, trace_id, span_id, flags = upstream_request.headers["traceparent"].split("-")
    assert version == "00"
    return trace_id, span_id, flags


def _request(receiver: OTLPReceiver) -> ReceivedSpan:
    (span,) = [span for span in receiver.spans if span.kind == "internal"]
    return span


async def test_a_library_call_is_an_internal_span_with_a_client_span_per_attempt(
    receiver: OTLPReceiver, tracing: Make, openai_upstream: OpenAIUpstream
) -> None:
    usage = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    openai_upstream.then(Script(usage=usage))
    traced = tracing(service_name="notebook")
    async with _router(traced, _entry("up", openai_upstream)) as router:
        text = await _answer(router, request_id="req-1", max_tokens=64, temperature=0.5)
    await _exported(traced)
    request = _request(receiver)
    assert request.name == "chat m"
    assert request.parent_span_id == ""  # a trace of its own
    assert request.resource["service.name"] == "notebook"
    assert request.scope == "polyroute"
    assert request.attributes["polyroute.request.id"] == "req-1"
    assert request.attributes["polyroute.status"] == "complete"
    assert request.attributes["polyroute.entry"] == "up"
    assert not request.is_error
    (attempt,) = receiver.children(request)
    assert (attempt.name, attempt.kind) == ("chat m", "client")
    assert request.start_ns <= attempt.start_ns < attempt.end_ns <= request.end_ns
    assert attempt.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "m",
        "gen_ai.response.model": "m",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 4,
        "gen_ai.response.finish_reasons": ["stop"],
        "server.address": "127.0.0.1",
        "server.port": openai_upstream.port,
        "polyroute.entry": "up",
        "polyroute.attempt.ttft_ms": attempt.attributes["polyroute.attempt.ttft_ms"],
    }
    assert text == "Hello, world!"
    # The upstream was told the attempt's own span: its trace, its id, sampled.
    (sent,) = openai_upstream.requests
    assert _traceparent(sent) == (attempt.trace_id, attempt.span_id, "01")


async def _retried_once(
    receiver: OTLPReceiver, tracing: Make, upstream: OpenAIUpstream
) -> tuple[ReceivedSpan, ReceivedSpan, ReceivedSpan]:
    """A request whose first attempt gets a 503 and whose retry is served, exported: its
    span, then its failed and its served attempt's."""
    upstream.then(Script(status=503, error_body='{"error": {"message": "busy"}}'))
    traced = tracing()
    async with _router(traced, _entry("up", upstream)) as router:
        await _answer(router)
    await _exported(traced)
    request = _request(receiver)
    failed, served = receiver.children(request)
    return request, failed, served


async def test_a_retry_is_two_attempt_spans_and_an_event(
    receiver: OTLPReceiver, tracing: Make, openai_upstream: OpenAIUpstream
) -> None:
    request, failed, served = await _retried_once(receiver, tracing, openai_upstream)
    assert failed.is_error
    assert not served.is_error
    assert failed.attributes["error.type"] == "UpstreamStatusError"
    assert failed.attributes["polyroute.attempt.outcome"] == "failed"
    assert failed.attributes["http.response.status_code"] == 503
    assert "gen_ai.response.model" not in failed.attributes  # nothing answered
    assert "503" in failed.status_message
    assert request.event_names() == ["attempt.retry"]
    (_, at, fields) = request.events[0]
    assert failed.end_ns <= at <= served.start_ns
    assert (fields["provider"], fields["retry"], fields["error_type"]) == (
        "up",
        1,
        "UpstreamStatusError",
    )
    first, second = openai_upstream.requests
    assert _traceparent(first)[1] == failed.span_id
    assert _traceparent(second)[1] == served.span_id


async def test_a_wall_clock_that_steps_does_not_move_events_out_of_their_spans(
    receiver: OTLPReceiver,
    tracing: Make,
    openai_upstream: OpenAIUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The spans' times are the record's end less durations measured on one clock; an
    # event timed on the wall clock read apart from it (an NTP step, or only a process
    # paused between the two reads) landed outside the attempts it sits between: a
    # retry's event 1.3 ms before its failed attempt ended, in a loaded suite run.
    wall = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: wall() - 50_000_000)
    request, failed, served = await _retried_once(receiver, tracing, openai_upstream)
    (_, at, _) = request.events[0]
    assert request.start_ns <= failed.end_ns <= at <= served.start_ns <= request.end_ns


async def test_a_relay_is_two_attempt_spans_under_one_request_span(
    receiver: OTLPReceiver, tracing: Make, start_openai: Callable[..., Any]
) -> None:
    first, backup = await start_openai(), await start_openai()
    first.then(Script(reset_after=2))  # cut after "Hello, ": the backup carries it on
    traced = tracing()
    entries = (_entry("first", first), _entry("backup", backup))
    async with _router(traced, *entries, retry={"attempts": 1}) as router:
        await _answer(router)
    await _exported(traced)
    request = _request(receiver)
    assert request.attributes["polyroute.status"] == "switched"
    assert request.attributes["polyroute.entry"] == "backup"
    cut, carried = receiver.children(request)
    assert {cut.trace_id, carried.trace_id} == {request.trace_id}
    assert (cut.attributes["polyroute.entry"], carried.attributes["polyroute.entry"]) == (
        "first",
        "backup",
    )
    assert cut.attributes["error.type"] == "UpstreamConnectionError"
    assert cut.attributes["polyroute.attempt.chars"] == len("Hello, ")
    assert carried.attributes["polyroute.attempt.relay_offset"] == len("Hello, ")
    assert "route.relay" in request.event_names()
    relay = next(fields for name, _, fields in request.events if name == "route.relay")
    assert (relay["from_provider"], relay["to_provider"], relay["mode"]) == (
        "first",
        "backup",
        "continue",
    )
    # Each upstream was told its own attempt's span.
    assert _traceparent(first.requests[0])[:2] == (cut.trace_id, cut.span_id)
    assert _traceparent(backup.requests[0])[:2] == (carried.trace_id, carried.span_id)


async def test_a_skipped_entry_is_an_event_of_the_request_span(
    receiver: OTLPReceiver, tracing: Make, start_openai: Callable[..., Any]
) -> None:
    limited, spare = await start_openai(), await start_openai()
    traced = tracing()
    entries = (_entry("limited", limited, limits={"rpm": 1}), _entry("spare", spare))
    async with _router(traced, *entries) as router:
        await _answer(router, request_id="first")
        await _answer(router, request_id="second")
    await _exported(traced)
    second = receiver.request_span("second")
    assert second is not None
    assert second.event_names() == ["route.skip", "route.next_provider"]
    skip = second.events[0][2]
    assert (skip["provider"], skip["reason"]) == ("limited", "rpm limit 1 reached")
    (served,) = receiver.children(second)
    assert served.attributes["polyroute.entry"] == "spare"


async def test_a_client_traceparent_is_continued_and_passed_on(
    receiver: OTLPReceiver, tracing: Make, openai_upstream: OpenAIUpstream
) -> None:
    traced = tracing(sample_ratio=0.0)  # the client's sampled flag decides, not the ratio
    labels = RequestLabels(traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
    async with _router(traced, _entry("up", openai_upstream)) as router:
        await _answer(router, labels=labels)
    await _exported(traced)
    request = _request(receiver)
    assert (request.trace_id, request.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)
    (attempt,) = receiver.children(request)
    assert _traceparent(openai_upstream.requests[0]) == (CLIENT_TRACE, attempt.span_id, "01")


async def test_an_unsampled_request_exports_no_span_and_says_so_upstream(
    receiver: OTLPReceiver, tracing: Make, openai_upstream: OpenAIUpstream
) -> None:
    traced = tracing(sample_ratio=0.0)
    unsampled = RequestLabels(traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00")
    async with _router(traced, _entry("up", openai_upstream)) as router:
        await _answer(router)  # a new trace, not kept at a ratio of 0
        await _answer(router, labels=unsampled)  # the client's, not sampled
    await _exported(traced)
    assert receiver.spans == []
    new, continued = (_traceparent(sent) for sent in openai_upstream.requests)
    assert new[2] == continued[2] == "00"
    assert continued[0] == CLIENT_TRACE
    assert new[0] != CLIENT_TRACE
    # The metrics count every request, sampled or not.
    durations = [p for p in receiver.points if p.metric == "gen_ai.client.operation.duration"]
    assert sum(point.count for point in durations) == 2


async def test_a_library_call_inside_a_span_of_the_caller_is_its_child(
    receiver: OTLPReceiver, tracing: Make, openai_upstream: OpenAIUpstream
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    callers = TracerProvider()  # the application's own tracing, not exported here
    traced = tracing()
    async with _router(traced, _entry("up", openai_upstream)) as router:
        with callers.get_tracer("app").start_as_current_span("handle") as span:
            await _answer(router)
    await _exported(traced)
    request = _request(receiver)
    context = span.get_span_context()
    assert request.trace_id == f"{context.trace_id:032x}"
    assert request.parent_span_id == f"{context.span_id:016x}"


@pytest.mark.parametrize("log_content", [False, True])
async def test_content_is_in_the_spans_only_with_log_content(
    receiver: OTLPReceiver, tracing: Make, openai_upstream: OpenAIUpstream, log_content: bool
) -> None:
    traced = tracing()
    labels = RequestLabels(log_content=log_content)
    async with _router(traced, _entry("up", openai_upstream)) as router:
        await _answer(router, labels=labels)
    await _exported(traced)
    every = {name: value for span in receiver.spans for name, value in span.attributes.items()}
    assert not [name for name in every if "message" in name and not log_content]
    if log_content:
        request = _request(receiver)
        assert request.attributes["gen_ai.input.messages"] == (
            '[{"role":"user","parts":[{"type":"text","content":"Hi"}]}]'
        )
        assert request.attributes["gen_ai.output.messages"] == (
            '[{"role":"assistant","parts":[{"type":"text","content":"Hello, world!"}],'
            '"finish_reason":"stop"}]'
        )
    texts = [str(value) for span in receiver.spans for value in span.attributes.values()]
    assert any("Hello" in text for text in texts) is log_content


async def test_the_genai_metrics_count_every_attempt_and_its_tokens(
    receiver: OTLPReceiver, tracing: Make, openai_upstream: OpenAIUpstream
) -> None:
    usage = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    openai_upstream.then(Script(status=503), Script(usage=usage))
    traced = tracing()
    async with _router(traced, _entry("up", openai_upstream)) as router:
        await _answer(router)
    await _exported(traced)
    durations = {
        point.attributes.get("error.type"): point
        for point in receiver.points
        if point.metric == "gen_ai.client.operation.duration"
    }
    assert set(durations) == {None, "UpstreamStatusError"}
    assert all(point.unit == "s" and point.count == 1 for point in durations.values())
    assert durations[None].attributes["gen_ai.provider.name"] == "openai"
    tokens = {
        point.attributes["gen_ai.token.type"]: point.sum
        for point in receiver.points
        if point.metric == "gen_ai.client.token.usage"
    }
    assert tokens == {"input": 11, "output": 4}


async def test_an_embeddings_call_is_an_embeddings_span(
    receiver: OTLPReceiver, tracing: Make, openai_upstream: OpenAIUpstream
) -> None:
    traced = tracing()
    entry = _entry("up", openai_upstream, supports_embeddings=True)
    async with _router(traced, entry) as router:
        await router.embed("m", ["one", "two words"], dimensions=4, request_id="emb-1")
    await _exported(traced)
    request = _request(receiver)
    assert request.name == "embeddings m"
    (attempt,) = receiver.children(request)
    assert attempt.name == "embeddings m"
    assert attempt.attributes["gen_ai.operation.name"] == "embeddings"
    assert attempt.attributes["gen_ai.embeddings.dimension.count"] == 4
    assert attempt.attributes["gen_ai.usage.input_tokens"] == 3
    (sent,) = openai_upstream.requests
    assert _traceparent(sent)[1] == attempt.span_id


async def test_a_collector_that_is_down_never_reaches_a_request(
    receiver: OTLPReceiver,
    openai_upstream: OpenAIUpstream,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = receiver.url
    await receiver.stop()  # nothing listens there now
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # each export gives up soon
    traced = Tracing({"otlp_endpoint": down})
    with capture_logs() as logs:
        async with _router(traced, _entry("up", openai_upstream)) as router:
            answers = [await _answer(router) for _ in range(3)]
        await asyncio.to_thread(traced.force_flush, 5.0)
        await traced.aclose()
    assert answers == ["Hello, world!"] * 3
    assert not [log for log in logs if log["event"] == "observer.failed"]
    assert len(openai_upstream.requests) == 3
    assert all("traceparent" in sent.headers for sent in openai_upstream.requests)
    # The exports were tried and failed, in the SDK's threads, which said so.
    failures = [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]
    assert any("Failed to export spans" in message for message in failures), failures


async def test_an_observer_that_only_logs_sees_no_change(
    openai_upstream: OpenAIUpstream,
) -> None:
    """Without a watching observer, nothing is added to the upstream request."""
    seen: list[Any] = []

    class Log:
        def request_ended(self, record: Any) -> None:
            seen.append(record)

    config = {"providers": [_entry("up", openai_upstream)]}
    async with Router.from_config(config, observers=[Log()]) as router:
        await _answer(router)
    assert len(seen) == 1
    assert "traceparent" not in openai_upstream.requests[0].headers


async def test_the_standard_switch_turns_everything_off(
    receiver: OTLPReceiver,
    tracing: Make,
    openai_upstream: OpenAIUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    traced = tracing()
    async with _router(traced, _entry("up", openai_upstream)) as router:
        assert await _answer(router) == "Hello, world!"
    await _exported(traced)
    assert (receiver.spans, receiver.points) == ([], [])
    assert _traceparent(openai_upstream.requests[0])[2] == "00"  # not sampled, said so
