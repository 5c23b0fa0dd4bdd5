"""Quiet logs: a client hanging up is an info event with its request's id, never an
ERROR traceback; a flood of one error is logged once per window, with a count."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import yaml

from polyroute.server.floods import RepeatFilter
from tests.server.helpers import eventually, gateway
from tests.server.raw_http import RawConnection, request_bytes
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

HI = [{"role": "user", "content": "Hi"}]
HANG_UPS = 12


async def until_asked(upstream: OpenAIUpstream, count: int) -> None:
    async def asked() -> bool:
        return len(upstream.requests) >= count

    await eventually(asked, 10)


async def test_clients_hanging_up_are_info_events_with_their_ids_not_tracebacks(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    # A long answer, paced: the clients leave while it is being written.
    openai_upstream.default = Script(chunks=["token "] * 400, delay=0.002)
    entry = {"name": "up", "type": "openai", "base_url": openai_upstream.base_url}
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"providers": [{**entry, "models": ["m"]}]}))
    ids = [f"hang-up-{index}" for index in range(HANG_UPS)]
    async with gateway(config, "-v", "--log-format", "json") as served:
        for index, request_id in enumerate(ids):
            if index % 2:  # a whole answer, awaited: the client leaves while it waits
                waiting = await RawConnection.open(served.url)
                body = json.dumps({"model": "m", "messages": HI}).encode()
                headers = {"x-request-id": request_id}
                await waiting.send(request_bytes("POST", "/v1/chat/completions", body, headers))
                await until_asked(openai_upstream, index + 1)
                waiting.close()
                continue
            body_json = {"model": "m", "messages": HI, "stream": True}
            async with aiohttp.ClientSession() as session:
                answer = await session.post(
                    f"{served.url}/v1/chat/completions",
                    json=body_json,
                    headers={"x-request-id": request_id},
                )
                await answer.content.readuntil(b"\n\n")
                answer.close()  # the connection dropped mid-answer (release() reads on)
        for request_id in ids:  # each one's access log line: all are over
            await served.said(f'"request_id": "{request_id}"')
    events = [json.loads(line) for line in served.stderr if line.startswith("{")]
    gone = {event["request_id"] for event in events if event["event"] == "gateway.client_gone"}
    assert gone == set(ids)
    assert all(e["level"] == "info" for e in events if e["event"] == "gateway.client_gone")
    assert not any("Traceback" in line for line in served.stderr)
    assert not any("Error handling request" in line for line in served.stderr)
    assert not any(event["level"] == "error" for event in events)


def test_a_flood_of_one_error_is_logged_once_per_window_with_a_count() -> None:
    now = [100.0]
    repeats = RepeatFilter(window_s=10.0, clock=lambda: now[0])
    logger = logging.getLogger("tests.floods")
    passed: list[str] = []

    def log(message: str, *args: object, level: int = logging.ERROR) -> None:
        record = logger.makeRecord(logger.name, level, __file__, 1, message, args, None)
        if repeats.filter(record):
            passed.append(record.getMessage())

    for number in range(2500):
        log("socket %s failed", number)
    log("another kind of error")
    log("noise at info, never held", level=logging.INFO)
    log("noise at info, never held", level=logging.INFO)
    now[0] += 10.0
    log("socket %s failed", 2500)
    assert passed == [
        "socket 0 failed",
        "another kind of error",
        "noise at info, never held",
        "noise at info, never held",
        "socket 2500 failed (2499 more like this in the last 10 s were not logged)",
    ]
