"""A drain that answers everyone: at the deadline, a request whose answer has not begun
gets a 503 to retry, and a stream an error event; during the drain, every answer closes
its connection and a new request on a kept-alive connection gets a 503."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.server.helpers import eventually, gateway
from tests.server.raw_http import RawConnection, request_bytes

HI = [{"role": "user", "content": "Hi"}]


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    return b"data: " + json.dumps({**body, "choices": [choice]}).encode() + b"\n\n"


class HeldUpstream:
    """An OpenAI-format upstream whose answers the test holds, by model: ``held``
    answers once ``release`` is set, ``stuck`` never sends its headers, ``started``
    sends its first chunk and nothing more."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.asked = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._answer)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        self.asked += 1
        if model == "stuck":
            await asyncio.Event().wait()
        if model == "held":
            await self.release.wait()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk({"role": "assistant", "content": "a"}))
        if model == "started":
            await asyncio.Event().wait()
        await response.write(chunk({}, "stop") + b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def held_upstream() -> AsyncIterator[HeldUpstream]:
    upstream = HeldUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


def config_for(tmp_path: Path, upstream: HeldUpstream, drain_seconds: float) -> Path:
    models = ["held", "stuck", "started"]
    entry = {"name": "up", "type": "openai", "base_url": upstream.url, "models": models}
    data = {"providers": [entry], "gateway": {"drain_seconds": drain_seconds}}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def chat(model: str, stream: bool = False) -> bytes:
    return json.dumps({"model": model, "messages": HI, "stream": stream}).encode()


async def asked(upstream: HeldUpstream, count: int) -> None:
    async def arrived() -> bool:
        return upstream.asked >= count

    await eventually(arrived, 10)


async def test_at_the_deadline_every_request_still_open_gets_an_answer(
    tmp_path: Path, held_upstream: HeldUpstream
) -> None:
    async with gateway(config_for(tmp_path, held_upstream, 0.3)) as served:
        whole = await RawConnection.open(served.url)
        await whole.send(request_bytes("POST", "/v1/chat/completions", chat("stuck")))
        waiting = await RawConnection.open(served.url)
        await waiting.send(request_bytes("POST", "/v1/chat/completions", chat("stuck", True)))
        await asked(held_upstream, 2)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{served.url}/v1/chat/completions", data=chat("started", True)
            ) as streaming,
        ):
            first = await streaming.content.readuntil(b"\n\n")
            served.process.send_signal(signal.SIGTERM)
            rest = await streaming.read()
        unbegun = [await whole.answer(), await waiting.answer()]
        whole.close()
        waiting.close()
    for answer in unbegun:  # before: no answer at all, the connection cut
        assert answer.status == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["connection"] == "close"
        assert answer.json()["error"]["code"] == "gateway_stopping"
    events = (first + rest).decode().split("\n\n")
    assert "data: [DONE]" not in events
    assert "stopped before the answer was complete" in events[-2]
    assert served.code == 0


async def test_during_the_drain_answers_close_their_connection_and_new_requests_get_503(
    tmp_path: Path, held_upstream: HeldUpstream
) -> None:
    async with gateway(config_for(tmp_path, held_upstream, 30)) as served:
        in_flight = await RawConnection.open(served.url)
        await in_flight.send(request_bytes("POST", "/v1/chat/completions", chat("held")))
        await asked(held_upstream, 1)
        kept = await RawConnection.open(served.url)
        await kept.send(request_bytes("GET", "/healthz"))
        before = await kept.answer()
        served.process.send_signal(signal.SIGTERM)

        async def refusing_connections() -> bool:
            # A connect the listener's full backlog leaves unanswered is tried again (it
            # is given up, and its socket closed, after a second).
            try:
                (await asyncio.wait_for(RawConnection.open(served.url), 1)).close()
            except (ConnectionRefusedError, ConnectionResetError):
                return True  # (reset: the listener closed with this one in its backlog)
            except TimeoutError:
                return False
            return False

        await eventually(refusing_connections, 10)  # it drains: no longer listening
        await kept.send(request_bytes("POST", "/v1/chat/completions", chat("held")))
        refused = await kept.answer()
        assert await kept.closed_by_peer() == b""
        held_upstream.release.set()
        finished = await in_flight.answer()
        kept.close()
        in_flight.close()
    assert before.status == 200
    assert before.headers.get("connection") != "close"
    assert refused.status == 503
    assert refused.headers["connection"] == "close"
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "gateway_stopping"
    assert finished.status == 200  # the request in flight finished...
    assert finished.headers["connection"] == "close"  # ...and closed its connection
    assert held_upstream.asked == 1  # the refused one never reached it
    assert served.code == 0
