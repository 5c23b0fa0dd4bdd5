"""A lean paced upstream and a lean load client, in plain asyncio protocols, for
``benchmarks.overload``: to overload one gateway core, the other core must carry a
thousand paced streams on both of the gateway's sides, which an aiohttp upstream and
an aiohttp client cannot (measured: they saturated the shared core at a gateway CPU of
35-50%). Here a chunk costs the upstream one timer callback and one write, and the
client one ``data_received``.

  python -m benchmarks.lean --upstream CHUNKS DELAY_MS      # prints "ready PORT"
  (the client is :func:`load`, run by benchmarks.overload in a process of its own)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

from benchmarks.upstream import openai_body

_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
_RETRY_AFTER = re.compile(rb"(?i)\r\nretry-after: *(\d+)")
_FIRST_TEXT = re.compile(rb'"content":\s*"token')
_END = b"data: [DONE]\n\n\r\n0\r\n\r\n"
"""The end of a complete streamed answer from polyroute serve (chunked)."""


def _framed(part: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(part), part)


class PacedUpstream(asyncio.Protocol):
    """Answers each request on the connection with an OpenAI-format stream of ``parts``
    (chunked), one part every ``delay`` seconds, the first at once."""

    def __init__(self, parts: list[bytes], delay: float) -> None:
        self.parts = [_framed(part) for part in parts] + [b"0\r\n\r\n"]
        self.delay = delay
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        length = _LENGTH.search(self.buffer[: end + 2])
        whole = end + 4 + (int(length[1]) if length else 0)
        if len(self.buffer) < whole:
            return
        self.buffer = self.buffer[whole:]
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        self._send(0, self.loop.time())

    def _send(self, index: int, due: float) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(self.parts[index])
        if index + 1 < len(self.parts):
            due += self.delay  # a schedule, not a pause after each write (no drift)
            self.loop.call_at(due, self._send, index + 1, due)


async def serve_upstream(chunks: int, delay_ms: float) -> None:
    loop = asyncio.get_running_loop()
    parts = openai_body(chunks)
    server = await loop.create_server(
        lambda: PacedUpstream(parts, delay_ms / 1000), "127.0.0.1", 0, backlog=4096
    )
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


class _Client(asyncio.Protocol):
    """One client: a streamed request, its answer read, the next; after a 503, the next
    only after its Retry-After."""

    def __init__(self, figures: Figures, request: bytes) -> None:
        self.figures = figures
        self.request = request
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.status = 0
        self.begun = 0.0
        self.first: float | None = None
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ask()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.begun:
            self.figures.done(self.begun, None, complete=False)
        self.transport = None
        self.closed.set()

    def ask(self) -> None:
        if self.transport is None or self.loop.time() >= self.figures.until:
            if self.transport is not None:
                self.transport.close()
            return
        self.buffer, self.status, self.first = b"", 0, None
        self.begun = self.loop.time()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.status:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.buffer[9:12])
        if self.status != 200:
            self._refused()
            return
        if self.first is None:
            if _FIRST_TEXT.search(self.buffer):
                self.first = self.loop.time() - self.begun
            else:
                return
        if self.buffer.endswith(_END):
            self.figures.done(self.begun, self.first, complete=True)
            self.begun = 0.0
            self.ask()
        elif len(self.buffer) > 4096:
            self.buffer = self.buffer[-64:]  # only the end is looked for now

    def _refused(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        length = _LENGTH.search(self.buffer[: end + 2])
        if length is None or len(self.buffer) < end + 4 + int(length[1]):
            return
        wait = _RETRY_AFTER.search(self.buffer[: end + 2])
        if self.status == 503 and wait is not None:
            self.figures.shed_at(self.begun)
            self.begun = 0.0
            self.loop.call_later(int(wait[1]), self.ask)
        else:
            self.figures.done(self.begun, None, complete=False)
            self.begun = 0.0
            self.ask()


class Figures:
    """What the clients saw, of the requests begun in [measure_from, until)."""

    def __init__(self, measure_from: float, until: float) -> None:
        self.measure_from = measure_from
        self.until = until
        self.ttfts: list[float] = []
        self.shed = 0
        self.errors = 0

    def counted(self, begun: float) -> bool:
        return self.measure_from <= begun < self.until

    def done(self, begun: float, first: float | None, *, complete: bool) -> None:
        if not self.counted(begun):
            return
        if complete and first is not None:
            self.ttfts.append(first)
        else:
            self.errors += 1

    def shed_at(self, begun: float) -> None:
        self.shed += self.counted(begun)


async def load(port: int, path: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` clients on one connection each (started spread over a 2 s
    warm-up), asking one streamed chat answer after another."""
    loop = asyncio.get_running_loop()
    body = json.dumps(
        {"model": "paced", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    )
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    warm = 2.0
    measure_from = loop.time() + warm
    figures = Figures(measure_from, measure_from + seconds)

    async def client(index: int) -> None:
        await asyncio.sleep(warm * index / concurrency)
        _transport, protocol = await loop.create_connection(
            lambda: _Client(figures, request), "127.0.0.1", port
        )
        await protocol.closed.wait()

    async def announce() -> None:
        await asyncio.sleep(measure_from - loop.time())
        print("measure", flush=True)
        await asyncio.sleep(figures.until - loop.time())
        print("end", flush=True)

    began = time.perf_counter()
    await asyncio.gather(announce(), *(client(index) for index in range(concurrency)))
    ttfts = sorted(figures.ttfts)
    asked = len(ttfts) + figures.shed + figures.errors

    def percentile_ms(q: float) -> float | None:
        return 1000 * ttfts[min(len(ttfts) - 1, int(len(ttfts) * q))] if ttfts else None

    return {
        "streams": len(ttfts),
        "shed": figures.shed,
        "errors": figures.errors,
        "shed_share": figures.shed / asked if asked else None,
        "error_share": figures.errors / asked if asked else None,
        "streams_per_s": len(ttfts) / seconds,
        "ttft_p50_ms": percentile_ms(0.5),
        "ttft_p99_ms": percentile_ms(0.99),
        "wall_s": time.perf_counter() - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", nargs=2, type=float, metavar=("CHUNKS", "DELAY_MS"))
    args = parser.parse_args()
    chunks, delay_ms = args.upstream
    asyncio.run(serve_upstream(int(chunks), delay_ms))


if __name__ == "__main__":
    main()
