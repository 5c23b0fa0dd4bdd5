"""A local upstream whose answers follow a :class:`Script`; subclasses say how a wire
format encodes one text chunk and the end of the answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from aiohttp import web

from tests.upstreams.server import LocalServer, RecordedRequest

Chunk: TypeAlias = str | dict[str, Any]
"""A piece of text, or (where the wire format has them) a whole delta object."""


@dataclass
class Script:
    """How the server answers one request. The defaults give a healthy answer."""

    chunks: Sequence[Chunk] = ("Hello", ", ", "world", "!")
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error_body: str = '{"error": "upstream failure"}'
    raw: bytes | None = None
    """Send these bytes as the body instead of encoding ``chunks``."""
    end: bool = True
    line_end: bytes = b"\n"
    content_type: str = "text/event-stream"
    delay: float = 0.0
    """Pause between writes."""
    piece_size: int | None = None
    """Write the body in pieces of this many bytes (splits lines and UTF-8 characters)."""
    stall_after: int | None = None
    """Hold the connection open without writing after this many chunks."""
    stall_after_end: bool = False
    """Hold the connection open after the end event, without ending the body."""
    stall_before_headers: bool = False
    reset_before_headers: bool = False
    """Abort the TCP connection instead of answering."""
    reset_after: int | None = None
    """Abort the TCP connection after this many chunks."""
    finish_reason: str = "stop"
    usage: dict[str, Any] | None = None


class ScriptedUpstream(LocalServer):
    """Answers each request with the next queued script, or ``default``."""

    def __init__(self, path: str, default: Script | None = None) -> None:
        super().__init__(self._answer, path)
        self.default = default or Script()
        self.queue: list[Script] = []

    def reset(self) -> None:
        """Healthy answers, nothing queued, nothing recorded."""
        self.default = Script()
        self.queue.clear()
        self.requests.clear()

    def then(self, *scripts: Script) -> ScriptedUpstream:
        """Queue scripts for the next requests, in order."""
        self.queue.extend(scripts)
        return self

    def frame(self, payload: bytes, line_end: bytes) -> bytes:
        return b"data: " + payload + line_end + line_end

    def encode_chunk(self, index: int, text: Chunk, script: Script, request: Any) -> bytes:
        raise NotImplementedError

    def encode_end(self, script: Script, request: Any) -> bytes:
        raise NotImplementedError

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        script = self.queue.pop(0) if self.queue else self.default
        if script.stall_before_headers:
            await asyncio.Event().wait()
        if script.reset_before_headers:
            await _abort(request)
        if script.status >= 300:
            return web.Response(
                status=script.status, text=script.error_body, headers=script.headers
            )
        response = web.StreamResponse(
            status=script.status, headers={"Content-Type": script.content_type, **script.headers}
        )
        await response.prepare(request)
        if script.raw is not None:
            pieces = [script.raw]
        else:
            chunks = list(script.chunks)
            cut = script.stall_after if script.stall_after is not None else script.reset_after
            if cut is not None:
                chunks = chunks[:cut]
            pieces = [
                self.encode_chunk(index, chunk, script, record.body)
                for index, chunk in enumerate(chunks)
            ]
            if script.end and cut is None:
                pieces.append(self.encode_end(script, record.body))
        if script.piece_size:
            body = b"".join(pieces)
            size = script.piece_size
            pieces = [body[i : i + size] for i in range(0, len(body), size)]
        for piece in pieces:
            await response.write(piece)
            if script.delay:
                await asyncio.sleep(script.delay)
        if script.stall_after is not None or script.stall_after_end:
            await asyncio.Event().wait()
        if script.reset_after is not None:
            await _abort(request)
        await response.write_eof()
        return response


async def _abort(request: web.Request) -> None:
    # Abort (not close) the socket: the client sees the connection drop mid-exchange.
    # aiohttp then cancels this handler, which records the exchange as not completed.
    assert request.transport is not None
    request.transport.abort()
    await asyncio.Event().wait()
