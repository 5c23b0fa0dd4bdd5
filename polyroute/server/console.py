"""The console (docs/console.md): ``GET /ui``, a page of plain HTML, CSS and JavaScript
shipped in this package (``console/``), and ``GET /admin/live``, the server-sent events
it reads the live table and the last hour's charts from. The other pages read the admin
API (keys, teams, spend, the request log) like any admin client.

The page loads without a key and asks for the admin key, which it keeps in the tab's
session storage and sends as ``Authorization: Bearer`` on every data request: no cookie,
so no request another site makes carries it (no CSRF). It is there only when the admin
API is (``gateway.admin_key_env``). Every answer under ``/ui`` and ``/admin`` forbids
inline script, eval, framing and caching (:data:`SECURITY_HEADERS`): the page renders
every value it shows as text, never as HTML.

The figures come from one sampler, once a second, whoever watches: a stream only sends
the bytes the sampler made for all of them (:mod:`polyroute.server.console_live`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from polyroute.core.errors import describe_error
from polyroute.core.logging import get_logger
from polyroute.router.router import Router
from polyroute.server.admin import AdminApi
from polyroute.server.console_live import Tally
from polyroute.server.dialects.errors import openai_error, own_failure
from polyroute.server.responses import error_response, request_id_of

_log = get_logger()

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
"""On every answer under ``/ui`` and ``/admin`` (the admin API's too)."""
MAX_LIVE_STREAMS = 32
"""Live streams open at once (a few tabs each): past it, 429."""
_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
}


def _assets() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once from the package: name -> (bytes, content type).
    Only these names are served (no path is ever joined from a request)."""
    folder = resources.files("polyroute.server").joinpath("console")
    found = {}
    for item in folder.iterdir():
        kind = item.name.rpartition(".")[2]
        if kind in _TYPES:
            found[item.name] = (item.read_bytes(), _TYPES[kind])
    return found


class Console:
    """The console of a gateway whose admin API is ``admin``. ``router`` gives the
    router in service (it changes with a reload), ``in_flight`` the gateway's requests
    in flight."""

    def __init__(
        self, admin: AdminApi, router: Callable[[], Router], in_flight: Callable[[], int]
    ) -> None:
        self._admin = admin
        self._router = router
        self._in_flight = in_flight
        self.tally = Tally()
        """Told of each routed request by the gateway's accounting."""
        self._assets = _assets()
        self._sampler: asyncio.Task[None] | None = None
        self._tick = asyncio.Event()
        self._latest = b""
        """The last snapshot event, made once for every stream."""
        self.watchers = 0
        """Live streams open now."""
        self._stopping = False

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ui", self.page)
        app.router.add_get("/ui/", self.to_page)
        app.router.add_get("/ui/{name}", self.asset)
        app.router.add_get("/admin/live", self.live)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._stop)
        app.on_cleanup.append(self._cleanup)

    # The page --------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def to_page(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("../ui")  # relative: right behind a proxy's path prefix too

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html" or name not in self._assets:
            raise web.HTTPNotFound()
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        body, content_type = self._assets[name]
        return web.Response(body=body, headers={"Content-Type": content_type})

    # The live stream -------------------------------------------------------------

    async def live(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/live``: an ``opening`` event (the last hour and the entries now),
        then a ``snapshot`` event every second, until the client leaves or the gateway
        stops."""
        if (refused := self._admin.refusal(request)) is not None:
            return refused
        if self.watchers >= MAX_LIVE_STREAMS:
            message = f"at most {MAX_LIVE_STREAMS} live streams are open at once: close a tab"
            error = openai_error(own_failure(429, message, "too_many_streams"))
            return error_response(error, request_id_of(request))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.watchers += 1
        try:
            opening = {"history": self.tally.history.as_json(), **self._snapshot(None, None)}
            await response.write(_event("opening", opening))
            while not self._stopping:
                tick = self._tick
                await tick.wait()
                if self._stopping:
                    break
                await response.write(self._latest)
        except ConnectionError:
            return response  # the client left between two writes
        finally:
            self.watchers -= 1
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    def _snapshot(self, second: int | None, point: dict[str, Any] | None) -> dict[str, Any]:
        """The entries now and the point of ``second``, just closed (``None``: none)."""
        router = self._router()
        return {
            "second": second,
            "in_flight": self._in_flight(),
            "state": router.describe_state(),
            "point": point,
            "entries": self.tally.entry_rows(router.entry_status()),
        }

    # The sampler -----------------------------------------------------------------

    async def _sample(self) -> None:
        """Once a second, on the second: close it into the history and, while someone
        watches, make the snapshot event and wake the streams."""
        second = math.floor(time.time()) + 1
        while True:
            await asyncio.sleep(max(0.0, second - time.time()))
            try:
                point = self.tally.tick(second)
                if self.watchers:
                    self._latest = _event("snapshot", self._snapshot(second, point))
                    self._wake()
            except Exception as error:  # a figure must never stop the sampling
                _log.warning("console.sample_failed", **describe_error(error))
            # The next second; past it already (a stalled loop), the one after now: the
            # history fills the skipped ones, and no second is closed twice.
            second = max(second + 1, math.floor(time.time()) + 1)

    def _wake(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def _start(self, app: web.Application) -> None:
        self._stopping = False
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample())

    async def _stop(self, app: web.Application) -> None:
        """End the live streams (before aiohttp waits for its handlers to finish)."""
        self._stopping = True
        self._wake()

    async def _cleanup(self, app: web.Application) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None


def _event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def harden(request: web.Request, response: web.StreamResponse) -> None:
    """:data:`SECURITY_HEADERS` on ``response`` when ``request`` is under ``/ui`` or
    ``/admin`` (the gateway calls it for every answer while the console is there)."""
    path = request.path
    if path == "/ui" or path.startswith(("/ui/", "/admin")):
        response.headers.update(SECURITY_HEADERS)
