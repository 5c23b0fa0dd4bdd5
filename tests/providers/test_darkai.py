"""DarkAI against a real local server speaking its wire format."""

from __future__ import annotations

import asyncio
import json

import pytest

from polyroute import (
    InvalidMessagesError,
    ModelNotSupportedError,
    RateLimitedError,
    Timeouts,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from polyroute.providers import DarkAI
from tests.upstreams.darkai import DarkAIUpstream, encode_events, text_event
from tests.upstreams.proxy import RecordingProxy
from tests.upstreams.scripted import Script
from tests.upstreams.server import wait_closed

HELLO = [{"role": "user", "content": "Hello, how are you?"}]


async def collect(provider: DarkAI, **kwargs: object) -> list[str]:
    kwargs.setdefault("model", "gpt-4o")
    kwargs.setdefault("messages", HELLO)
    return [chunk async for chunk in provider.create_async_generator(**kwargs)]  # type: ignore[arg-type]


def test_class_attributes_match_the_specification() -> None:
    assert DarkAI.url == DarkAI.api_endpoint == "https://darkai.foundation/chat"
    assert DarkAI.working is False
    assert DarkAI.supports_stream is True
    assert DarkAI.default_model == "llama-3-70b"
    assert DarkAI.models == ["gpt-4o", "gpt-3.5-turbo", "llama-3-70b"]
    assert DarkAI.model_aliases == {"llama-3.1-70b": "llama-3-70b"}


async def test_seed_example_minimal_parameters_streams_every_chunk(
    darkai_upstream: DarkAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Example 1 of the seed, verbatim but for the endpoint, called on the class.
    monkeypatch.setattr(DarkAI, "api_endpoint", darkai_upstream.url)
    model = "gpt-3.5-turbo"
    messages = [{"role": "user", "content": "Hello, how are you?"}]
    printed = []
    async for chunk in DarkAI.create_async_generator(model=model, messages=messages):
        printed.append(chunk)
    assert printed == ["Hello", ", ", "world", "!"]
    request = darkai_upstream.requests[0]
    assert request.body == {"query": "Hello, how are you?", "model": "gpt-3.5-turbo"}


async def test_seed_example_with_proxy_relays_through_the_proxy(
    darkai_upstream: DarkAIUpstream,
    recording_proxy: RecordingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Example 2 of the seed: the proxy must really carry the request.
    monkeypatch.setattr(DarkAI, "api_endpoint", darkai_upstream.url)
    model = "gpt-4o"
    messages = [{"role": "user", "content": "Tell me a joke."}]
    proxy = recording_proxy.url()
    chunks = [
        c async for c in DarkAI.create_async_generator(model=model, messages=messages, proxy=proxy)
    ]
    assert "".join(chunks) == "Hello, world!"
    assert [r.request_line for r in recording_proxy.requests] == [
        f"POST {darkai_upstream.url} HTTP/1.1"
    ]


async def test_proxy_credentials_are_sent_but_never_shown(
    darkai_upstream: DarkAIUpstream, recording_proxy: RecordingProxy
) -> None:
    proxy_url = recording_proxy.url("alice:hunter2-secret")
    provider = DarkAI(api_endpoint=darkai_upstream.url, proxy=proxy_url)
    async with provider:
        assert "".join(await collect(provider)) == "Hello, world!"
    assert recording_proxy.requests[0].proxy_authorization is not None
    assert recording_proxy.requests[0].proxy_authorization.startswith("Basic ")
    assert "hunter2-secret" not in repr(provider)


async def test_request_headers_and_body_follow_the_wire_format(
    darkai_upstream: DarkAIUpstream,
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        await collect(provider, model="llama-3.1-70b", messages=messages)
    request = darkai_upstream.requests[0]
    assert request.method == "POST"
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("Mozilla/5.0")
    assert request.body == {
        "query": "System: Be brief.\nUser: Hi\nAssistant:",
        "model": "llama-3-70b",
    }


async def test_empty_model_uses_the_default_model(darkai_upstream: DarkAIUpstream) -> None:
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        await collect(provider, model="")
    assert darkai_upstream.requests[0].body["model"] == "llama-3-70b"


async def test_each_chunk_is_yielded_as_soon_as_it_arrives(darkai_upstream: DarkAIUpstream) -> None:
    darkai_upstream.default = Script(chunks=["one", "two"], stall_after=1)
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        stream = provider.create_async_generator("gpt-4o", HELLO)
        # The server holds the connection after "one": reaching it proves no accumulation.
        assert await anext(stream) == "one"
        await stream.aclose()


async def test_tiny_pieces_split_lines_and_utf8_characters(darkai_upstream: DarkAIUpstream) -> None:
    chunks = ["Привет", ", мир ", "🌍", " done"]
    darkai_upstream.default = Script(chunks=chunks, piece_size=3)
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        assert await collect(provider) == chunks


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
async def test_every_line_ending_is_understood(
    darkai_upstream: DarkAIUpstream, line_end: bytes
) -> None:
    darkai_upstream.default = Script(line_end=line_end, piece_size=5)
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        assert "".join(await collect(provider)) == "Hello, world!"


async def test_last_line_without_trailing_newline_is_not_lost(
    darkai_upstream: DarkAIUpstream,
) -> None:
    body = encode_events([text_event("kept")]) + b'data: {"event": "stream-end"}'
    darkai_upstream.default = Script(raw=body)
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        assert await collect(provider) == ["kept"]


async def test_data_without_a_space_is_understood(darkai_upstream: DarkAIUpstream) -> None:
    body = b'data:{"event": "text-chunk", "data": {"text": "tight"}}\n\n'
    body += b'data:{"event": "stream-end"}\n\n'
    darkai_upstream.default = Script(raw=body)
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        assert await collect(provider) == ["tight"]


async def test_unknown_events_and_comments_are_skipped(darkai_upstream: DarkAIUpstream) -> None:
    body = b": keep-alive\n\n" + encode_events(
        [{"event": "metadata", "data": {}}, text_event("x"), {"event": "stream-end"}]
    )
    darkai_upstream.default = Script(raw=body)
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        assert await collect(provider) == ["x"]


async def test_stream_ending_before_stream_end_raises_after_the_text(
    darkai_upstream: DarkAIUpstream,
) -> None:
    darkai_upstream.default = Script(chunks=["partial"], end=False)
    received: list[str] = []

    async def consume(provider: DarkAI) -> None:
        async for chunk in provider.create_async_generator("gpt-4o", HELLO):
            received.append(chunk)

    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        with pytest.raises(UpstreamProtocolError, match="stream ended before stream-end") as caught:
            await consume(provider)
    assert received == ["partial"]
    assert caught.value.provider == "darkai"
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"data: {not json}\n\n", "JSONDecodeError"),
        (b'data: {"event": "text-chunk"}\n\n', "KeyError"),
        (b'data: {"event": "text-chunk", "data": {"text": 5}}\n\n', "TypeError"),
        (b"data: [1, 2]\n\n", "TypeError"),
    ],
)
async def test_malformed_events_raise_with_the_offending_line(
    darkai_upstream: DarkAIUpstream, body: bytes, detail: str
) -> None:
    darkai_upstream.default = Script(raw=body)
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        with pytest.raises(UpstreamProtocolError, match=detail) as caught:
            await collect(provider)
    assert body.decode().strip()[6:20] in str(caught.value)
    assert caught.value.provider == "darkai"


async def test_malformed_line_is_cut_short_in_the_error(darkai_upstream: DarkAIUpstream) -> None:
    darkai_upstream.default = Script(raw=b"data: {" + b"x" * 5000 + b"\n\n")
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        with pytest.raises(UpstreamProtocolError) as caught:
            await collect(provider)
    assert len(str(caught.value)) < 400
    assert "(5001 chars)" in str(caught.value)


async def test_server_error_status_raises_retryable_status_error(
    darkai_upstream: DarkAIUpstream,
) -> None:
    darkai_upstream.default = Script(status=503, error_body="service overloaded")
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        with pytest.raises(UpstreamStatusError) as caught:
            await collect(provider)
    error = caught.value
    assert (error.status, error.provider, error.retryable) == (503, "darkai", True)
    assert "service overloaded" in error.body
    assert "darkai" in str(error)
    assert "503" in str(error)


async def test_client_error_status_is_not_retryable(darkai_upstream: DarkAIUpstream) -> None:
    darkai_upstream.default = Script(status=400)
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        with pytest.raises(UpstreamStatusError) as caught:
            await collect(provider)
    assert caught.value.status == 400
    assert caught.value.retryable is False


async def test_rate_limit_carries_retry_after(darkai_upstream: DarkAIUpstream) -> None:
    darkai_upstream.default = Script(status=429, headers={"Retry-After": "7"})
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        with pytest.raises(RateLimitedError) as caught:
            await collect(provider)
    assert caught.value.retry_after == 7.0
    assert caught.value.retryable is True


async def test_html_page_with_status_200_is_a_protocol_error(
    darkai_upstream: DarkAIUpstream,
) -> None:
    darkai_upstream.default = Script(raw=b"<html>maintenance</html>", content_type="text/html")
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        with pytest.raises(UpstreamProtocolError, match="text/html"):
            await collect(provider)


async def test_refused_connection_raises_connection_error() -> None:
    server = await DarkAIUpstream().start()
    url = server.url
    await server.stop()  # the port is now closed
    async with DarkAI(api_endpoint=url) as provider:
        with pytest.raises(UpstreamConnectionError) as caught:
            await collect(provider)
    assert caught.value.retryable is True
    assert caught.value.provider == "darkai"


async def test_stall_before_headers_times_out(darkai_upstream: DarkAIUpstream) -> None:
    darkai_upstream.default = Script(stall_before_headers=True)
    async with DarkAI(api_endpoint=darkai_upstream.url, timeout=Timeouts(idle=0.2)) as provider:
        with pytest.raises(UpstreamTimeout) as caught:
            await collect(provider)
    assert caught.value.retryable is True
    await wait_closed(darkai_upstream.requests[0])


async def test_stall_mid_stream_times_out_after_the_text(darkai_upstream: DarkAIUpstream) -> None:
    darkai_upstream.default = Script(chunks=["a", "b", "c"], stall_after=2)
    received: list[str] = []

    async def consume(provider: DarkAI) -> None:
        stream = provider.create_async_generator("gpt-4o", HELLO, timeout=Timeouts(idle=0.2))
        async for chunk in stream:
            received.append(chunk)

    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        with pytest.raises(UpstreamTimeout):
            await consume(provider)
    assert received == ["a", "b"]


async def test_first_chunk_timeout_counts_only_until_the_first_text(
    darkai_upstream: DarkAIUpstream,
) -> None:
    darkai_upstream.default = Script(chunks=[], stall_after=0)  # headers, then silence
    async with DarkAI(
        api_endpoint=darkai_upstream.url, timeout=Timeouts(first_chunk=0.2)
    ) as provider:
        with pytest.raises(UpstreamTimeout, match="first-chunk"):
            await collect(provider)


async def test_total_timeout_override_applies_to_one_call(darkai_upstream: DarkAIUpstream) -> None:
    darkai_upstream.default = Script(chunks=["a"], stall_after=1)
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        assert provider.timeouts.total == 600
        with pytest.raises(UpstreamTimeout):
            await collect(provider, timeout=0.3)


async def test_api_endpoint_override_applies_to_one_call(darkai_upstream: DarkAIUpstream) -> None:
    async with DarkAI(api_endpoint="http://127.0.0.1:9/unused") as provider:
        text = await collect(provider, api_endpoint=darkai_upstream.url)
    assert "".join(text) == "Hello, world!"


async def test_closing_the_generator_closes_the_upstream_connection(
    darkai_upstream: DarkAIUpstream,
) -> None:
    darkai_upstream.default = Script(chunks=["first", "second"], stall_after=1)
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        stream = provider.create_async_generator("gpt-4o", HELLO)
        assert await anext(stream) == "first"
        await stream.aclose()
        await wait_closed(darkai_upstream.requests[0])
    assert darkai_upstream.requests[0].completed is False


async def test_cancelling_the_consumer_closes_the_upstream_connection(
    darkai_upstream: DarkAIUpstream,
) -> None:
    darkai_upstream.default = Script(stall_before_headers=True)
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        task = asyncio.create_task(collect(provider))
        await darkai_upstream.request_seen.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_closed(darkai_upstream.requests[0])
    assert darkai_upstream.requests[0].completed is False


async def test_one_instance_reuses_its_connection(darkai_upstream: DarkAIUpstream) -> None:
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        await collect(provider)
        session = provider._sessions.session
        await collect(provider)
        assert provider._sessions.session is session
        connector = session.connector
        assert connector is not None
    assert session.closed


async def test_unsupported_model_fails_before_any_request(darkai_upstream: DarkAIUpstream) -> None:
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        with pytest.raises(ModelNotSupportedError, match=r"gpt-4o, gpt-3\.5-turbo, llama-3-70b"):
            await collect(provider, model="claude-3")
    assert darkai_upstream.requests == []


async def test_invalid_messages_fail_before_any_request(darkai_upstream: DarkAIUpstream) -> None:
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        with pytest.raises(InvalidMessagesError, match="role"):
            await collect(provider, messages=[{"role": "wizard", "content": "x"}])
    assert darkai_upstream.requests == []


async def test_unknown_event_is_logged_at_debug(darkai_upstream: DarkAIUpstream) -> None:
    from structlog.testing import capture_logs

    darkai_upstream.default = Script(
        raw=encode_events([{"event": "ping"}, {"event": "stream-end"}])
    )
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        with capture_logs() as logs:
            assert await collect(provider) == []
    assert {
        "event": "provider.unknown_event",
        "provider": "darkai",
        "upstream_event": "ping",
        "log_level": "debug",
    } in logs


def test_body_is_json_serialisable() -> None:
    provider = DarkAI()
    from polyroute.core.request import ChatRequest

    body = provider.build_request("gpt-4o", ChatRequest.build(HELLO, {}))
    assert json.loads(json.dumps(body)) == {"query": "Hello, how are you?", "model": "gpt-4o"}


async def test_data_lines_one_newline_apart_stream_as_the_seed_reads_them(
    darkai_upstream: DarkAIUpstream,
) -> None:
    events = [text_event("Hel"), text_event("lo"), {"event": "stream-end", "data": {}}]
    raw = b"".join(b"data: " + json.dumps(event).encode() + b"\n" for event in events)
    darkai_upstream.default = Script(raw=raw)
    async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
        assert await collect(provider) == ["Hel", "lo"]


async def test_an_error_event_is_a_typed_upstream_error_with_its_message(
    darkai_upstream: DarkAIUpstream,
) -> None:
    events = [text_event("Hel"), {"event": "error", "data": {"message": "model overloaded"}}]
    darkai_upstream.default = Script(raw=encode_events(events))
    received: list[str] = []

    async def consume() -> None:
        async with DarkAI(api_endpoint=darkai_upstream.url) as provider:
            async for text in provider.create_async_generator("gpt-4o", HELLO):
                received.append(text)

    with pytest.raises(
        UpstreamError, match="error event in the stream: model overloaded"
    ) as caught:
        await consume()
    assert type(caught.value) is UpstreamError
    assert caught.value.retryable
    assert received == ["Hel"]
