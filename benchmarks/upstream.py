"""The benchmark upstream: a separate process on 127.0.0.1 serving both wire formats.

Routes: ``POST /v1/chat/completions`` (openai chunks), ``POST /chat`` (darkai events),
``POST /tools/v1/chat/completions`` (one tool call streamed in as many fragments as a
text answer has chunks),
``POST /fail/v1/chat/completions`` (an instant 503, for the failover figure),
``POST /cut/v1/chat/completions`` (half the answer, then the connection dropped),
``POST /idle/v1/chat/completions`` (one chunk, then the stream is held open) and
``POST /v1/embeddings`` (a fixed answer in OpenAI's shape: 16 vectors of 256 floats,
whatever the input, encoded once per ``encoding_format``, naming the model asked) and
``POST /anthropic/v1/messages`` (the text answer in Anthropic's events, as the API
writes them).
With no delay the whole answer is written at once, so that the client is what is
measured; with a delay each chunk is written on its own, on a schedule ``delay``
apart, and so arrives in its own socket read, as from a real upstream. (A schedule,
not a sleep after each write: on a busy core a late write would push every later
chunk back, and streams that start apart would drift into step with each other.)
Run: python -m benchmarks.upstream --chunks 64 --delay-ms 0 --cpu 0
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import struct

from aiohttp import web

from polyroute.core.deltas import FinishDelta, TextDelta, ToolCallDelta
from polyroute.core.sse import DONE_EVENT, OpenAIChunkEncoder, encode_event, named_event

TEXT = "token "


def openai_body(chunks: int) -> list[bytes]:
    encoder = OpenAIChunkEncoder("bench", id="chatcmpl-bench", created=1700000000)
    parts = [encode_event(encoder.chunk({"role": "assistant", "content": ""}))]
    parts += [encoder.encode(TextDelta(TEXT)) for _ in range(chunks)]
    return [*parts, encoder.encode(FinishDelta("stop")), DONE_EVENT]


def tools_body(chunks: int) -> list[bytes]:
    """One call whose fragments are as many, and about as long, as a text answer's chunks."""
    encoder = OpenAIChunkEncoder("bench", id="chatcmpl-bench", created=1700000000)
    pieces = ['{"q": "', *[TEXT] * (chunks - 2), '"}']
    fragments = [ToolCallDelta(0, id="call_bench", name="search", arguments=pieces[0])]
    fragments += [ToolCallDelta(0, arguments=piece) for piece in pieces[1:]]
    parts = [encode_event(encoder.chunk({"role": "assistant", "content": None}))]
    parts += [encoder.encode(fragment) for fragment in fragments]
    return [*parts, encoder.encode(FinishDelta("tool_calls")), DONE_EVENT]


def anthropic_body(chunks: int) -> list[bytes]:
    message = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "bench",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 8, "output_tokens": 1},
    }
    delta = {"type": "content_block_delta", "index": 0}
    parts = [
        named_event("message_start", {"type": "message_start", "message": message}),
        named_event("ping", {"type": "ping"}),
        named_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    text = {**delta, "delta": {"type": "text_delta", "text": TEXT}}
    parts += [named_event("content_block_delta", text)] * chunks
    stop = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
    return [
        *parts,
        named_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        named_event("message_delta", {**stop, "usage": {"output_tokens": chunks}}),
        named_event("message_stop", {"type": "message_stop"}),
    ]


def darkai_body(chunks: int) -> list[bytes]:
    event = json.dumps({"event": "text-chunk", "data": {"text": TEXT}}).encode()
    end = json.dumps({"event": "stream-end", "data": {}}).encode()
    return [b"data: " + event + b"\n\n"] * chunks + [b"data: " + end + b"\n\n"]


def embeddings_bodies(inputs: int = 16, dimensions: int = 256) -> dict[str, tuple[bytes, bytes]]:
    """OpenAI's embeddings answer in each ``encoding_format``, as the bytes before and
    after the model's name (the answer names the model asked, as OpenAI's does):
    floats of OpenAI's length (about 9 digits), or their float32 bytes in base64."""
    rng = random.Random(24)
    vectors = [[round(rng.uniform(-0.1, 0.1), 9) for _ in range(dimensions)] for _ in range(inputs)]
    usage = {"prompt_tokens": 4 * inputs, "total_tokens": 4 * inputs}
    packed = [base64.b64encode(struct.pack(f"<{dimensions}f", *v)).decode() for v in vectors]
    bodies = {}
    for form, encoded in (("float", vectors), ("base64", packed)):
        data = [
            {"object": "embedding", "index": index, "embedding": vector}
            for index, vector in enumerate(encoded)
        ]
        answer = {"object": "list", "data": data, "model": "MODEL", "usage": usage}
        before, after = json.dumps(answer).encode().split(b'"MODEL"')
        bodies[form] = (before, after)
    return bodies


def make_app(chunks: int, delay: float) -> web.Application:
    bodies = {
        "openai": openai_body(chunks),
        "tools": tools_body(chunks),
        "darkai": darkai_body(chunks),
        "anthropic": anthropic_body(chunks),
    }
    whole = {name: b"".join(parts) for name, parts in bodies.items()}
    half = b"".join(bodies["openai"][: chunks // 2 + 1])  # the role chunk and half the text
    embedded = embeddings_bodies()

    async def answer(request: web.Request, wire: str) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if delay:
            loop = asyncio.get_running_loop()
            due = loop.time()
            for part in bodies[wire]:
                await response.write(part)
                due += delay
                await asyncio.sleep(due - loop.time())
        else:
            await response.write(whole[wire])
        await response.write_eof()
        return response

    async def cut(request: web.Request) -> web.StreamResponse:
        """Half the answer, then the connection dropped: every stream is relayed."""
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(half)
        assert request.transport is not None
        request.transport.abort()
        await asyncio.Event().wait()  # aiohttp cancels the handler of a lost connection
        return response

    async def fail(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=503, text='{"error": {"message": "overloaded"}}')

    async def idle(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(bodies["openai"][1])
        await asyncio.Event().wait()  # held open until the client goes away
        return response

    async def embeddings(request: web.Request) -> web.Response:
        asked = json.loads(await request.read())
        before, after = embedded[asked.get("encoding_format", "float")]
        body = before + json.dumps(asked["model"]).encode() + after
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", lambda r: answer(r, "openai"))
    app.router.add_post("/tools/v1/chat/completions", lambda r: answer(r, "tools"))
    app.router.add_post("/chat", lambda r: answer(r, "darkai"))
    app.router.add_post("/cut/v1/chat/completions", cut)
    app.router.add_post("/fail/v1/chat/completions", fail)
    app.router.add_post("/idle/v1/chat/completions", idle)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/anthropic/v1/messages", lambda r: answer(r, "anthropic"))
    return app


async def serve(chunks: int, delay_ms: float) -> None:
    runner = web.AppRunner(
        make_app(chunks, delay_ms / 1000), access_log=None, handler_cancellation=True
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
    print(f"ready {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(serve(args.chunks, args.delay_ms))


if __name__ == "__main__":
    main()
