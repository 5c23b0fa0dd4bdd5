"""The gateway's client connections: how many may be open, how long each may take to
say what it wants, and how a malformed request is answered.

aiohttp closes a connection that sends nothing only after its keep-alive timeout, and
has no time limit of its own for a request's headers (its ``slow_request_timeout`` is
long gone): a client that connects and sends nothing, or half a request, would hold a
socket and a file descriptor for as long as that timeout. Here each connection is an
aiohttp :class:`~aiohttp.web.RequestHandler` that must deliver a request's line and
headers within ``gateway.header_timeout_s`` (counted from the connection's opening,
then from the first byte of each later request), and the listener refuses connections
past ``max_connections`` at once, with a 503, rather than let them take the
descriptors the requests already admitted need. aiohttp's own refusals of a request it
cannot parse (a bad ``Content-Length``, a header too long) are answered in the
endpoint's error shape, and logged as the client's mistakes they are, not as the
server's errors.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from polyroute.core.errors import clipped
from polyroute.core.logging import get_logger
from polyroute.server.dialects.errors import WireError
from polyroute.server.keys import KeyMemo
from polyroute.server.limits import Limits
from polyroute.server.listener import Listener, bound_sockets

_log = get_logger()
Shaper = Callable[[str, int, str, "str | None"], WireError]
"""The error of a status and message in the dialect of a path: ``(path, status,
message, code)``."""
_LINGERING = 64
"""Refused connections kept open at once to read what their client still sends (so
that it reads the 503 rather than a reset); past that, a refusal closes at once."""
_LINGER_S = 1.0


class ConnectionGuard:
    """Counts the gateway's client connections against ``limits.max_connections``, and
    what its limits did to them, for ``/metrics`` and ``/readyz``."""

    def __init__(self, limits: Limits, header_timeout_s: float, shaped: Shaper) -> None:
        self.limits = limits
        self.header_timeout_s = header_timeout_s
        self.shaped = shaped
        self.open = 0
        self.refused = 0
        """Connections refused at once: ``max_connections`` were open."""
        self.timed_out: Counter[str] = Counter()
        """Requests given up on, by what was late (``headers``)."""
        self.lingering = 0
        self.on_close: Callable[[], None] | None = None
        """Told when a connection closes (a descriptor is free again)."""

    def closed(self, counted: bool) -> None:
        if counted:
            self.open -= 1
        if self.on_close is not None:
            self.on_close()

    @property
    def is_full(self) -> bool:
        return self.open >= self.limits.max_connections

    def raw_error(self, path: str, status: int, message: str, code: str) -> bytes:
        """A whole HTTP answer that closes the connection, for when aiohttp has no
        request to answer (a refused connection, headers that never came)."""
        error = self.shaped(path, status, message, code)
        body = json.dumps(error.body).encode()
        head = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
            "Server: polyroute",
        ]
        if error.retry_after is not None:
            head.append(f"Retry-After: {max(1, round(error.retry_after))}")
        return "\r\n".join(head).encode() + b"\r\n\r\n" + body


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection protocol, counted by ``guard``, with a time limit on each
    request's headers. :func:`tracked` (a middleware) tells it when a request reached
    the application, which stops the clock; aiohttp's ``log_access``, when its answer
    is written, which makes the connection idle again."""

    __slots__ = (
        "_awaiting", "_busy", "_counted", "_deadline", "_guard", "_head", "_timer", "key_memo",
    )  # fmt: skip

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        """When the headers being awaited are late (the loop's clock)."""
        self._busy = False
        self._awaiting = False
        self._head = b""
        """The first bytes of the request being received: its path says in which
        dialect a refusal is written."""
        self._counted = True
        self.key_memo = KeyMemo()
        """The gateway's memo of this connection's key (see :class:`KeyMemo`)."""
        guard.open += 1  # at creation: asyncio makes a batch of protocols, then connects them

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._await_request()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._awaiting = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard.closed(self._counted)
        self._counted = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._busy and not self._awaiting:
            self._await_request()  # a later request on a kept-alive connection begins
        if self._awaiting and len(self._head) < 512:
            self._head += data[: 512 - len(self._head)]
        super().data_received(data)

    def request_began(self) -> None:
        self._busy = True
        self._awaiting = False

    def log_access(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float | None
    ) -> None:
        """aiohttp's call once an answer is written to its end: the connection is idle
        (until then the next request's clock must not run: a 408 would land inside
        the answer still being written)."""
        self._busy = False
        if response.status == 408:
            # The body stopped coming: aiohttp would linger up to 10 s reading the rest
            # of it before it closes. Nothing is coming; close once the 408 is sent.
            self._lingering_time = 0.0
        super().log_access(request, response, time)

    def _await_request(self) -> None:
        self._awaiting = True
        self._head = b""
        loop = self._loop
        self._deadline = loop.time() + self._guard.header_timeout_s
        # One clock a connection, not one a request: set when none is running, and
        # when it rings for an earlier request's deadline it is set again for this
        # one's (a timer made and cancelled per request cost the heap two operations).
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._clock_rang)

    def _clock_rang(self) -> None:
        self._timer = None
        if not self._awaiting or self.transport is None:
            return  # no request awaited now: the next one sets the clock again
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._clock_rang)
            return
        guard = self._guard
        guard.timed_out["headers"] += 1
        if self._head:  # half a request: say why it is dropped (nothing: just close)
            message = (
                f"the request's headers did not arrive within {guard.header_timeout_s} s "
                "(gateway.header_timeout_s)"
            )
            self.transport.write(guard.raw_error(self._path(), 408, message, "request_timeout"))
        self.force_close()  # the transport sends what it holds first

    def _path(self) -> str:
        """The path of the request being received, as far as its first bytes say."""
        parts = self._head.split(b" ", 2)
        return parts[1].decode("latin-1") if len(parts) > 2 else "/"

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (400) or whose handler
        failed (500), in the endpoint's error shape; the client's mistakes are logged
        as such (``gateway.bad_request``), not as the server's errors."""
        parsing = isinstance(exc, HttpProcessingError)
        path = self._path() if parsing else request.path
        if status < 500:
            detail = getattr(exc, "message", None) or message or HTTPStatus(status).phrase
            _log.info("gateway.bad_request", status=status, path=clipped(path), reason=detail)
            text = f"the request is malformed: {clipped(str(detail))}"
            code: str | None = "invalid_request"
        else:
            self.logger.error("Error handling request to %s", clipped(path), exc_info=exc)
            text, code = "the gateway failed on this request (its log says why)", None
        if request.writer.output_size > 0:  # as aiohttp: too late for another answer
            raise ConnectionError("the answer had begun: no error answer can follow")
        error = self._guard.shaped(path, status, text, code)
        response = web.Response(
            status=status, body=json.dumps(error.body).encode(), content_type="application/json"
        )
        response.force_close()
        return response


@web.middleware
async def tracked(request: web.Request, handler: Any) -> web.StreamResponse:
    """Tell the connection that its request reached the application: its headers
    came in time."""
    if isinstance(protocol := request.protocol, GuardedHandler):
        protocol.request_began()
    response: web.StreamResponse = await handler(request)
    return response


class _Refused(asyncio.Protocol):
    """A connection past ``max_connections``: answered 503 at once and closed, after
    reading for a moment what its client had sent (closing with it unread would
    reset the connection, and the client might lose the answer)."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        guard = self._guard
        guard.refused += 1
        message = (
            f"the gateway has {guard.limits.max_connections} connections open, its limit "
            "(gateway.max_connections): retry shortly"
        )
        transport.write(guard.raw_error("/", 503, message, "gateway_busy"))
        if guard.lingering >= _LINGERING:
            transport.close()
            return
        guard.lingering += 1
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # read and dropped

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._guard.lingering -= 1
        self._guard.closed(counted=False)


def listen(
    server: web.Server,
    guard: ConnectionGuard,
    host: str,
    port: int,
    *,
    reuse_port: bool,
    handler_args: dict[str, Any],
) -> Listener:
    """Listen on ``host:port`` with ``guard``'s backlog, each connection a
    :class:`GuardedHandler` of ``server`` (made with ``handler_args``, those the
    runner was given) or, past ``max_connections``, refused. Raises ``OSError`` when
    the address cannot be bound."""
    loop = asyncio.get_running_loop()

    def connection() -> asyncio.BaseProtocol:
        if guard.is_full:
            return _Refused(guard)
        return GuardedHandler(server, guard, loop=loop, **handler_args)

    sockets = bound_sockets(host, port, backlog=guard.limits.backlog, reuse_port=reuse_port)
    listener = Listener(sockets, connection)
    guard.on_close = listener.resume
    listener.start()
    return listener
