"""The gateway's listening sockets, and its own accept loop.

asyncio's server, when ``accept()`` fails for want of a descriptor (EMFILE), logs the
error with a traceback and schedules a retry, and goes on trying once per connection
it may accept in that round, up to the backlog (CPython 3.11's
``selector_events._accept_connection``): with a backlog of 2048, that is 2,048
tracebacks and as many timers each second the shortage lasts, and the retries left
scheduled fail again once the server has closed. This loop stops accepting for a
moment instead, says so once per pause (``gateway.accept_paused``), and starts again
as soon as one of its connections closes. Each connection accepted is handed to
asyncio as it is (``loop.connect_accepted_socket``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from polyroute.core.logging import get_logger
from polyroute.core.overload import OWN_SHORTAGES

_log = get_logger()
ACCEPT_BATCH = 64
"""Connections accepted per wake-up; more wait for the next turn of the loop."""
PAUSE_S = 0.5
"""How long accepting stops after ``accept()`` found no descriptor (unless a connection
closes first)."""


def bound_sockets(host: str, port: int, *, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for every address of ``host`` (as asyncio's ``create_server``
    binds them: address reuse, IPv6 sockets IPv6 only); raises the ``OSError`` of the
    first that cannot bind."""
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            listening = socket.socket(family, kind, proto)
            sockets.append(listening)
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listening.bind(address)
            listening.listen(backlog)
            listening.setblocking(False)
    except BaseException:
        for listening in sockets:
            listening.close()
        raise
    return sockets


class Listener:
    """Accepts connections on ``sockets`` and makes each a protocol of ``connection``."""

    def __init__(
        self, sockets: list[socket.socket], connection: Callable[[], asyncio.BaseProtocol]
    ) -> None:
        self.sockets = sockets
        self._connection = connection
        self._loop = asyncio.get_running_loop()
        self._connecting: set[asyncio.Task[object]] = set()
        self._paused: asyncio.TimerHandle | None = None
        self._closed = False
        self.pauses = 0
        """Times accepting stopped for want of a descriptor."""

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sockets[0].getsockname()[:2]
        return host, port

    def start(self) -> None:
        for listening in self.sockets:
            self._loop.add_reader(listening.fileno(), self._accept, listening)

    def close(self) -> None:
        """Stop listening; the connections open go on. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        for listening in self.sockets:
            self._loop.remove_reader(listening.fileno())
            listening.close()

    def resume(self) -> None:
        """A connection closed: accept again at once if a shortage had stopped it."""
        if self._paused is not None and not self._closed:
            self._paused.cancel()
            self._paused = None
            self.start()

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                accepted, _address = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno not in OWN_SHORTAGES:
                    raise
                self._pause(error)
                return
            task = self._loop.create_task(self._connect(accepted))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, accepted: socket.socket) -> object:
        try:
            return await self._loop.connect_accepted_socket(self._connection, accepted)
        except OSError:  # gone before it could be set up: nothing to serve
            with contextlib.suppress(OSError):
                accepted.close()
            return None

    def _pause(self, error: OSError) -> None:
        if self._paused is not None:
            return
        self.pauses += 1
        _log.warning("gateway.accept_paused", reason=str(error), seconds=PAUSE_S)
        for listening in self.sockets:
            self._loop.remove_reader(listening.fileno())
        self._paused = self._loop.call_later(PAUSE_S, self.resume)
