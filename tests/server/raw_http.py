"""HTTP/1.1 by hand on a raw socket, for what an HTTP client will not send (a header
byte that is not ASCII, a bad Content-Length, half a request, nothing at all) and to
watch a connection itself (kept alive, closed)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

GUARD_S = 30.0
"""How long a read may wait before the test fails: a bound, never the expectation."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    """Lower-cased names."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request_bytes(
    method: str, path: str, body: bytes = b"", headers: dict[str, str | bytes] | None = None
) -> bytes:
    """A whole request; header values given as bytes go as they are."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    given = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    for name, value in {**given, **(headers or {})}.items():
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class RawConnection:
    """One TCP connection to the gateway at ``url``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> RawConnection:
        where = urlsplit(url)
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> Answer:
        """The next answer on the connection, read whole (by length, or chunk by chunk)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), GUARD_S)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            read = self.reader.readexactly(int(headers["content-length"]))
            body = await asyncio.wait_for(read, GUARD_S)
        elif headers.get("transfer-encoding") == "chunked":
            body = await asyncio.wait_for(self._chunks(), GUARD_S)
        else:
            body = await asyncio.wait_for(self.reader.read(), GUARD_S)
        return Answer(int(status_line.split()[1]), headers, body)

    async def _chunks(self) -> bytes:
        body = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await self.reader.readexactly(size + 2)
            if not size:
                return body
            body += chunk[:-2]

    async def closed_by_peer(self) -> bytes:
        """Wait until the gateway closes the connection; what it sent before."""
        received = b""
        while data := await asyncio.wait_for(self.reader.read(65536), GUARD_S):
            received += data
        return received

    def close(self) -> None:
        self.writer.close()


async def exchange(url: str, data: bytes) -> Answer:
    """Send ``data`` on a new connection and read one answer."""
    connection = await RawConnection.open(url)
    try:
        await connection.send(data)
        return await connection.answer()
    finally:
        connection.close()
