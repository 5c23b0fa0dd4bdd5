"""A local HTTP upstream on 127.0.0.1 that records what it is asked and how each
exchange ended, shared by the wire-format fixtures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class RecordedRequest:
    """One request as the upstream saw it, and how the exchange ended."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: Any
    peer: Any = None
    """The client's address and port: one per connection."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    completed: bool = False
    """True when the handler wrote its whole answer; False when the client went away."""


Handler = Callable[[web.Request, RecordedRequest], Awaitable[web.StreamResponse]]


class LocalServer:
    """Runs ``handler`` for every request on a free port of 127.0.0.1."""

    def __init__(self, handler: Handler, path: str = "/chat") -> None:
        self._handler = handler
        self.path = path
        self.requests: list[RecordedRequest] = []
        self.request_seen = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def start(self) -> LocalServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that disconnects cancels the handler, which is
        # how the tests observe "the upstream saw its connection closed".
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        self.port = await listen(self._runner)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = await request.json() if raw else None
        except ValueError:
            body = raw
        peer = request.transport.get_extra_info("peername") if request.transport else None
        record = RecordedRequest(
            request.method, request.path, CIMultiDict(request.headers), body, peer
        )
        self.requests.append(record)
        self.request_seen.set()
        try:
            response = await self._handler(request, record)
            record.completed = True
            return response
        finally:
            record.closed.set()


async def wait_closed(record: RecordedRequest, within: float = 5.0) -> None:
    """Wait until the upstream saw ``record``'s exchange end (bounded, never a sleep)."""
    await asyncio.wait_for(record.closed.wait(), within)


async def listen(runner: web.AppRunner, port: int = 0) -> int:
    """Set ``runner`` up on 127.0.0.1:``port`` (0: a free one); the port it listens on."""
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = site._server
    assert server is not None
    return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
