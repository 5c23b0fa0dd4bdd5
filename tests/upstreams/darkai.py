"""A local server speaking DarkAI's wire format, with scriptable faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web

from tests.upstreams.server import LocalServer, RecordedRequest

END_EVENT = {"event": "stream-end", "data": {}}


def text_event(text: str) -> dict[str, object]:
    return {"event": "text-chunk", "data": {"text": text}}


def encode_events(events: Sequence[object], line_end: bytes = b"\n") -> bytes:
    """Events as DarkAI frames them: one ``data: {json}`` line and a blank line each."""
    return b"".join(
        b"data: " + json.dumps(event).encode() + line_end + line_end for event in events
    )


def encode_answer(chunks: Sequence[str], *, end: bool = True, line_end: bytes = b"\n") -> bytes:
    events: list[object] = [text_event(chunk) for chunk in chunks]
    if end:
        events.append(END_EVENT)
    return encode_events(events, line_end)


@dataclass
class DarkAIScript:
    """How the server answers one request. The defaults give a healthy answer."""

    chunks: Sequence[str] = ("Hello", ", ", "world", "!")
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
    stall_before_headers: bool = False


class DarkAIUpstream(LocalServer):
    """Answers each request with the next queued script, or ``default``."""

    def __init__(self, default: DarkAIScript | None = None) -> None:
        super().__init__(self._answer)
        self.default = default or DarkAIScript()
        self.queue: list[DarkAIScript] = []

    def then(self, *scripts: DarkAIScript) -> DarkAIUpstream:
        """Queue scripts for the next requests, in order."""
        self.queue.extend(scripts)
        return self

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        script = self.queue.pop(0) if self.queue else self.default
        if script.stall_before_headers:
            await asyncio.Event().wait()
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
            if script.stall_after is not None:
                chunks = chunks[: script.stall_after]
            pieces = [
                encode_answer([chunk], end=False, line_end=script.line_end) for chunk in chunks
            ]
            if script.end and script.stall_after is None:
                pieces.append(encode_events([END_EVENT], script.line_end))
        if script.piece_size:
            body = b"".join(pieces)
            pieces = [
                body[i : i + script.piece_size] for i in range(0, len(body), script.piece_size)
            ]
        for piece in pieces:
            await response.write(piece)
            if script.delay:
                await asyncio.sleep(script.delay)
        if script.stall_after is not None:
            await asyncio.Event().wait()
        await response.write_eof()
        return response
