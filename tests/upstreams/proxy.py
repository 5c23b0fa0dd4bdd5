"""A minimal HTTP forward proxy on 127.0.0.1 that records the requests it relays."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from yarl import URL


@dataclass
class ProxiedRequest:
    request_line: str
    proxy_authorization: str | None


class RecordingProxy:
    """Relays plain-HTTP requests (absolute-form request line) to their origin."""

    def __init__(self) -> None:
        self.requests: list[ProxiedRequest] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def url(self, credentials: str | None = None) -> str:
        auth = f"{credentials}@" if credentials else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    async def start(self) -> RecordingProxy:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        # Closing the sockets ends the relays; cancelling their tasks instead would make
        # asyncio's stream server report the cancellation as an unhandled error.
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._tasks)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ")
            headers = [line for line in header_lines if line]
            auth = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in headers
                    if line.lower().startswith("proxy-authorization:")
                ),
                None,
            )
            self.requests.append(ProxiedRequest(request_line, auth))
            url = URL(target)
            up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
            self._writers.add(up_writer)
            kept = [line for line in headers if not line.lower().startswith("proxy-")]
            origin_head = "\r\n".join([f"{method} {url.raw_path_qs} {version}", *kept, "", ""])
            up_writer.write(origin_head.encode("latin-1"))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # either side hung up: the relay is over
        finally:
            writer.close()
            self._tasks.discard(task)  # type: ignore[arg-type]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(ConnectionError):
            writer.close()
