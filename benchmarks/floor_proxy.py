"""The floor for a Python gateway: the least an aiohttp server can do to relay a
stream (read the request, POST it upstream on a pooled connection, copy the answer's
bytes back as they come). No parsing, no routing, no checks: what polyroute serve adds
on top of this is its own cost.

  python -m benchmarks.floor_proxy '{"NAME": "UPSTREAM_BASE", ...}' PORT
      # POST /NAME/v1/chat/completions is relayed to UPSTREAM_BASE/v1/chat/completions,
      # POST /NAME/v1/embeddings to UPSTREAM_BASE/v1/embeddings,
      # POST /NAME/anthropic/v1/messages to UPSTREAM_BASE/anthropic/v1/messages
"""

from __future__ import annotations

import contextlib
import json
import sys

import aiohttp
from aiohttp import web


def make_app(upstreams: dict[str, str]) -> web.Application:
    app = web.Application()
    sessions: list[aiohttp.ClientSession] = []

    async def relay(request: web.Request) -> web.StreamResponse:
        if not sessions:
            sessions.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        name = request.match_info["name"]
        url = upstreams[name] + request.path.removeprefix(f"/{name}")
        async with sessions[0].post(url, data=body, headers=headers) as answer:
            kind = answer.headers.get("Content-Type", "text/event-stream")
            response = web.StreamResponse(headers={"Content-Type": kind})
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):  # the client went away
                async for data in answer.content.iter_any():
                    await response.write(data)
                await response.write_eof()
            return response

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def close(_app: web.Application) -> None:
        for session in sessions:
            await session.close()

    app.router.add_post("/{name}/v1/chat/completions", relay)
    app.router.add_post("/{name}/v1/embeddings", relay)
    app.router.add_post("/{name}/anthropic/v1/messages", relay)
    app.router.add_get("/healthz", healthz)
    app.on_cleanup.append(close)
    return app


if __name__ == "__main__":
    app = make_app(json.loads(sys.argv[1]))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None)
