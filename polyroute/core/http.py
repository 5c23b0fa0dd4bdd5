"""HTTP plumbing shared by every provider: session ownership, timeouts, and one
function that POSTs a request and yields the Server-Sent Events of the answer.

This is the only module that knows aiohttp's exceptions; everything above it sees
polyroute's typed errors.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson

from polyroute.core.anthropic_wire import AnthropicPassThroughReader
from polyroute.core.errors import (
    AuthenticationError,
    GatewayOverloaded,
    RateLimitedError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from polyroute.core.overload import own_shortage
from polyroute.core.redaction import redact
from polyroute.core.sse import DEFAULT_MAX_LINE_BYTES, Framing, SSEDecoder
from polyroute.core.wire import EventRunReader, PassThroughReader, Relayed, WireFormat

_READERS: dict[WireFormat, type[EventRunReader]] = {
    "openai": PassThroughReader,
    "anthropic": AnthropicPassThroughReader,
}
"""The reader that relays each format's plain text chunks (``pass_through=``)."""
_BODY_EXCERPT_BYTES = 2048
_FIRST_SLICE_BYTES = 1024
"""About the role chunk and a few chunks of text in OpenAI's format."""
_added_headers: ContextVar[Mapping[str, str] | None] = ContextVar(
    "polyroute_added_headers", default=None
)


@contextmanager
def adding_headers(headers: Mapping[str, str]) -> Iterator[None]:
    """Within the block (in this task and the tasks it starts), every upstream request
    also carries ``headers``, over the provider's own: the router sets an attempt's
    ``traceparent`` so around the attempt. A context variable rather than a keyword:
    it reaches every request the attempt makes (a continuation asked again, a wrapped
    provider's inner one, a custom provider's) with no change to the provider contract.
    """
    token = _added_headers.set(headers)
    try:
        yield
    finally:
        _added_headers.reset(token)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-request time limits in seconds; ``None`` disables one.

    - ``connect``: opening the TCP (and TLS) connection;
    - ``first_chunk``: from the request until the first piece of text;
    - ``idle``: the longest silence between two reads of the response (this covers
      waiting for the response headers too; keep-alive comments reset it);
    - ``total``: the whole request, from sending it to the last byte.
    """

    connect: float | None = 10.0
    first_chunk: float | None = None
    idle: float | None = None
    total: float | None = 600.0

    def merged(self, override: Timeouts | float | None) -> Timeouts:
        """These timeouts with ``override`` applied (a number replaces ``total``)."""
        if override is None:
            return self
        if isinstance(override, Timeouts):
            return override
        return replace(self, total=float(override))

    def for_aiohttp(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.total, sock_connect=self.connect, sock_read=self.idle
        )


class SessionOwner:
    """Owns one ``aiohttp.ClientSession`` (and its connection pool), created lazily
    inside the running event loop and reused by every request until :meth:`aclose`.

    ``limit`` caps simultaneous connections (``0``: no cap, which suits long-lived
    streams, where each open stream holds one connection).
    """

    def __init__(self, *, limit: int = 0, limit_per_host: int = 0) -> None:
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=self._limit_per_host, ttl_dns_cache=300
            )
            # Only a capped pool can make a request wait for a slot: the others pay
            # nothing for tracing.
            traced = [_slot_waits()] if self._limit or self._limit_per_host else []
            self._session = aiohttp.ClientSession(connector=connector, trace_configs=traced)
        return self._session

    @property
    def is_open(self) -> bool:
        return self._session is not None and not self._session.closed

    async def aclose(self) -> None:
        """Close the session and every pooled connection. Safe to call twice."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.

    Returns ``None`` for a missing or unparseable value, and never a negative number.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def status_error(
    status: int,
    *,
    provider: str,
    body: str = "",
    headers: Mapping[str, str] | None = None,
    url: str | None = None,
) -> UpstreamStatusError:
    """The typed error for a non-2xx answer: 429 rate limit, 401/403 auth, others by
    status; ``url`` (the one that answered) is shown without its query string."""
    retry_after = parse_retry_after((headers or {}).get("Retry-After"))
    body = body.strip()[:_BODY_EXCERPT_BYTES]
    shown = _shown_url(url) if url else None
    if status == 429:
        return RateLimitedError(
            status, provider=provider, body=body, retry_after=retry_after, url=shown
        )
    if status in (401, 403):
        return AuthenticationError(status, provider=provider, body=body, retryable=False, url=shown)
    return UpstreamStatusError(
        status, provider=provider, body=body, retry_after=retry_after, url=shown
    )


def _shown_url(url: str) -> str:
    """``url`` as an error message shows it: no query string (where a key may be) and
    no credentials."""
    return redact(url.partition("?")[0])


async def _raise_for_status(response: aiohttp.ClientResponse, provider: str, url: str) -> None:
    if response.status < 300:
        return
    raw = await response.content.read(_BODY_EXCERPT_BYTES)
    raise status_error(
        response.status,
        provider=provider,
        body=raw.decode("utf-8", "replace"),
        headers=response.headers,
        url=url,
    )


def _check_content_type(response: aiohttp.ClientResponse, provider: str) -> None:
    # An HTML error page served with status 200 is a classic proxy/CDN failure mode;
    # reading it as SSE would only produce a vaguer error later.
    content_type = response.headers.get("Content-Type")
    if content_type is None or response.content_type == "text/event-stream":
        return
    raise UpstreamProtocolError(
        f"expected Content-Type text/event-stream, got {content_type!r}", provider=provider
    )


def translate_client_error(
    error: BaseException, provider: str, url: str | None = None
) -> UpstreamError | GatewayOverloaded:
    """Map an aiohttp or socket exception to polyroute's typed upstream error; the
    message says which URL and, for a connection that could not be made, why in plain
    words (``connection refused``), not aiohttp's ``ssl:default`` details. A socket
    this process could not make (no file descriptor left) is
    :class:`GatewayOverloaded`: the upstream was never reached."""
    if (own := own_shortage(error, provider)) is not None:
        return own
    if isinstance(error, TimeoutError):
        return UpstreamTimeout(f"timed out ({type(error).__name__})", provider=provider)
    if isinstance(error, aiohttp.ClientConnectorError):
        where = _shown_url(url) if url else f"{error.host}:{error.port}"
        return UpstreamConnectionError(
            f"cannot connect to {where}: {_connect_reason(error.os_error)}", provider=provider
        )
    if isinstance(error, aiohttp.ClientPayloadError):
        # aiohttp's words (TransferEncodingError: Not enough data to satisfy transfer
        # length header) say how it noticed; the router adds how much had arrived.
        return UpstreamConnectionError.closed_mid_answer(provider)
    if isinstance(error, aiohttp.InvalidURL):
        return UpstreamConnectionError(f"invalid URL {error}", provider=provider, retryable=False)
    detail = str(error) or type(error).__name__
    return UpstreamConnectionError(f"connection failed: {detail}", provider=provider)


def _connect_reason(cause: OSError) -> str:
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, socket.gaierror):
        return "host name not found"
    if isinstance(cause, TimeoutError):
        return "timed out"
    return cause.strerror or str(cause) or type(cause).__name__


@dataclass(slots=True)
class AnswerEnd:
    """Set ``seen`` once the answer's end event is read (``data: [DONE]``,
    ``message_stop``...): closing :func:`stream_event_batches` then keeps the
    connection for the next request, reading what the upstream still sends after its
    end event (usually only the body's last bytes) in the background."""

    seen: bool = False
    waiting_for_slot: bool = False
    """True while the request waits for a free connection of an entry's capped pool
    (``connection_limit``): a timeout then is the gateway's own, not the upstream's."""


def _slot_waits() -> aiohttp.TraceConfig:
    """Notes on a request's :class:`AnswerEnd` (its ``trace_request_ctx``) while it
    waits for a slot of its session's capped pool."""

    async def queued(_session: Any, context: Any, _params: Any) -> None:
        if isinstance(end := context.trace_request_ctx, AnswerEnd):
            end.waiting_for_slot = True

    async def dequeued(_session: Any, context: Any, _params: Any) -> None:
        if isinstance(end := context.trace_request_ctx, AnswerEnd):
            end.waiting_for_slot = False

    trace = aiohttp.TraceConfig()
    trace.on_connection_queued_start.append(queued)
    trace.on_connection_queued_end.append(dequeued)
    return trace


async def stream_event_batches(
    session: aiohttp.ClientSession,
    url: str,
    *,
    provider: str,
    body: Any,
    headers: Mapping[str, str] | None = None,
    proxy: str | None = None,
    timeouts: Timeouts = Timeouts(),
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    framing: Framing = "events",
    on_headers: Callable[[Mapping[str, str]], None] | None = None,
    end: AnswerEnd | None = None,
    pass_through: WireFormat | None = None,
) -> AsyncGenerator[Sequence[Relayed], None]:
    """POST ``body`` as JSON to ``url`` and yield the answer's SSE events, one list per
    socket read (one async hop per read rather than per event keeps the hot path short).

    Raises :class:`UpstreamStatusError` (or a subclass) for non-2xx answers,
    :class:`UpstreamConnectionError`, :class:`UpstreamTimeout` and
    :class:`UpstreamProtocolError`. Closing the generator (``aclose()``, or
    cancellation) closes the connection at once, unless ``end.seen`` says the answer
    was complete (see :class:`AnswerEnd`). ``on_headers`` sees the headers of a
    successful answer (rate-limit figures). ``pass_through``: the answer's format, whose
    plain text chunks come as :class:`WireDelta` runs of their bytes (core/wire.py).
    """
    decoder = SSEDecoder(provider=provider, max_line_bytes=max_line_bytes, framing=framing)
    reader = _READERS[pass_through](decoder) if pass_through is not None else decoder
    watch: _IdleWatch | None = None
    response: aiohttp.ClientResponse | None = None
    try:
        # orjson bytes, not aiohttp's JSON payload (stdlib json): that was about 3% of
        # the gateway's CPU per request in a py-spy profile with a one-chunk upstream.
        headers = {"Content-Type": "application/json", **(headers or {})}
        if added := _added_headers.get():
            headers.update(added)
        response = await session.post(
            url,
            data=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
            headers=headers,
            proxy=proxy,
            timeout=timeouts.for_aiohttp(),
            trace_request_ctx=end,
        )
        await _raise_for_status(response, provider, url)
        _check_content_type(response, provider)
        if on_headers is not None:
            on_headers(response.headers)
        content = response.content
        if timeouts.idle and response.connection is not None:
            # aiohttp's sock_read re-arms a timer on every read (a heap push and a
            # cancel per chunk); past the headers, one lazy watchdog does the job.
            response.connection.protocol.read_timeout = None  # type: ignore[union-attr]
            watch = _IdleWatch(content, timeouts.idle)
        first_read = True
        while True:
            if watch is not None:
                watch.since = watch.clock()
            data = await content.readany()
            if watch is not None:
                watch.since = None
            if not data:
                break
            if first_read and len(data) > _FIRST_SLICE_BYTES:
                # An upstream that answers at once sends it all in one read: its first
                # events go up before the rest is decoded (and parsed, above us).
                if events := reader.feed(data[:_FIRST_SLICE_BYTES]):
                    yield events
                data = data[_FIRST_SLICE_BYTES:]
            first_read = False
            if events := reader.feed(data):
                yield events
        if events := reader.close():
            yield events
    except UpstreamError:
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as error:
        raise translate_client_error(error, provider, url) from error
    except RuntimeError:
        if not _closed_under(response):
            raise
        raise _closed_session_error(provider) from None
    finally:
        if watch is not None:
            watch.cancel()
        if response is not None:
            if end is not None and end.seen and not response.content.is_eof():
                _release_when_read(response)
            else:
                response.release()  # back to the pool when read to the end, else closed
                await response.wait_for_close()


# What an upstream may still send after its end event before its connection is given
# up rather than kept: a chunked body's terminator, a trailing comment or two.
_TAIL_SECONDS = 1.0
_TAIL_BYTES = 64 * 1024
_reading_tails: set[asyncio.Task[None]] = set()


def _release_when_read(response: aiohttp.ClientResponse) -> None:
    """Read the rest of a complete answer in the background, then release it: an
    upstream that pauses between its end event and the end of the body (one that
    paces its writes) would otherwise cost a new connection per request."""
    task = asyncio.get_running_loop().create_task(_read_tail(response))
    _reading_tails.add(task)  # a strong reference until it is done
    task.add_done_callback(_reading_tails.discard)


async def _read_tail(response: aiohttp.ClientResponse) -> None:
    left = _TAIL_BYTES
    try:
        async with asyncio.timeout(_TAIL_SECONDS):
            while left > 0 and (data := await response.content.readany()):
                left -= len(data)
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass  # a slow or broken tail: release() closes the connection rather than pool it
    except RuntimeError:
        if not _closed_under(response):  # a gateway stopping: nothing left to read
            raise
    finally:
        response.release()  # pooled when read to its end, closed otherwise


def _closed_under(response: aiohttp.ClientResponse | None) -> bool:
    """Whether ``response``'s connection was closed under a read of it (its session
    closed: the provider, router or gateway closed while it ran), which aiohttp reports
    as ``RuntimeError("Connection closed.")``, not as a ``ClientError``. Any other
    RuntimeError is a fault to be seen, not this."""
    if response is None:
        return False
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    return protocol is None or not protocol.is_connected()


def _closed_session_error(provider: str) -> UpstreamConnectionError:
    return UpstreamConnectionError(
        "the connection was closed under the answer (the provider's session closed)",
        provider=provider,
    )


async def fetch_answer(
    session: aiohttp.ClientSession,
    url: str,
    *,
    provider: str,
    headers: Mapping[str, str] | None = None,
    proxy: str | None = None,
    timeouts: Timeouts = Timeouts(),
    body: Any = None,
) -> tuple[bytes, Any]:
    """GET ``url`` (POST ``body`` as JSON, when given): its body as it came (to relay
    it) and decoded; errors as for :func:`stream_event_batches`."""
    method, data = ("GET", None) if body is None else ("POST", orjson.dumps(body))
    if added := _added_headers.get():
        headers = {**(headers or {}), **added}
    response: aiohttp.ClientResponse | None = None
    try:
        async with session.request(
            method, url, data=data, headers=headers, proxy=proxy, timeout=timeouts.for_aiohttp()
        ) as response:
            await _raise_for_status(response, provider, url)
            raw = await response.read()
            try:
                # orjson: aiohttp's response.json() is the stdlib's, 7x slower on a
                # 56 KB embeddings answer (measured: 930 us against 130).
                return raw, orjson.loads(raw) if raw else None
            except ValueError as error:
                raise UpstreamProtocolError(
                    f"invalid JSON from {url}: {error}", provider=provider
                ) from None
    except UpstreamError:
        raise
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        raise translate_client_error(error, provider, url) from error
    except RuntimeError:
        if not _closed_under(response):
            raise
        raise _closed_session_error(provider) from None


class _IdleWatch:
    """The idle timeout while a response body is read: fails ``reader`` when one wait
    for data (``since`` is set around it) lasts ``limit`` seconds. Its timer is re-armed
    only when it fires, so a read costs two clock reads rather than a timer."""

    __slots__ = ("_handle", "_limit", "_loop", "_reader", "clock", "since")

    def __init__(self, reader: aiohttp.StreamReader, limit: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.clock = self._loop.time
        self._reader = reader
        self._limit = limit
        self.since: float | None = None
        self._handle = self._loop.call_later(limit, self._check)

    def _check(self) -> None:
        since = self.since
        if since is None:  # not waiting now: look again a whole period later
            self._handle = self._loop.call_later(self._limit, self._check)
        elif self.clock() - since >= self._limit:
            error = aiohttp.ServerTimeoutError(f"no data for {self._limit} s (idle timeout)")
            self._reader.set_exception(error)
        else:
            self._handle = self._loop.call_at(since + self._limit, self._check)

    def cancel(self) -> None:
        self._handle.cancel()
