"""A deliberately bad gateway: it relays the upstream's chunks and, when the upstream
fails mid-answer, ends the stream as if the answer were complete (finish_reason, then
[DONE]). The suite must call that a silent truncation and exit 1."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from polyroute.conformance.faults import FAULTS, Ports
from polyroute.core.sse import DONE_EVENT, OpenAIChunkEncoder, encode_event
from tests.conformance.command import conformance

NAIVE_END = encode_event(OpenAIChunkEncoder("naive").chunk(finish_reason="stop")) + DONE_EVENT


@asynccontextmanager
async def naive_gateway(ports: Ports) -> AsyncIterator[str]:
    """A relay with no fallback that hides every mid-stream failure; yields its /v1 URL."""
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=0.5))

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        fault = str(body["model"]).removeprefix("conformance-")
        try:
            upstream = await session.post(ports.base_url(fault) + "/chat/completions", json=body)
        except aiohttp.ClientConnectionError:
            return web.json_response({"error": {"message": "upstream unreachable"}}, status=502)
        async with upstream:
            if upstream.status != 200:
                return web.Response(status=upstream.status, body=await upstream.read())
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            try:
                async for line in upstream.content:
                    if line.strip() == b"data: [DONE]":
                        break
                    await response.write(line)
            except (aiohttp.ClientError, TimeoutError):
                pass  # the flaw under test: the failure is hidden from the client
            with contextlib.suppress(ConnectionError):  # a client that gave up already
                await response.write(NAIVE_END)
            return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", relay)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()
        await session.close()


async def test_a_gateway_that_ends_a_cut_answer_normally_is_caught(upstreams_port: int) -> None:
    async with naive_gateway(Ports.from_base(upstreams_port)) as url:
        code, out, err = await conformance(
            "run", url, "--upstreams-port", str(upstreams_port), "--json"
        )
    assert code == 1, (out, err)
    report = json.loads(out)
    assert set(report) == {"gateway", "results", "silent_truncations"}
    assert report["gateway"] == url
    assert [r["fault"] for r in report["results"]] == [fault.name for fault in FAULTS]
    assert all(set(r) == {"fault", "outcome", "detail"} for r in report["results"])
    outcomes = {r["fault"]: r["outcome"] for r in report["results"]}
    assert outcomes == {
        "cut-mid-answer": "silent_truncation",
        "cut-in-tool-call": "silent_truncation",
        "stall-before-first-chunk": "silent_truncation",
        "stall-after-first-chunk": "silent_truncation",
        "malformed-chunk": "visible_error",  # relayed as it came: the client cannot parse it
        "error-event": "visible_error",  # relayed as it came: the client raises
        "rate-limited-429": "visible_error",
        "unavailable-503": "visible_error",
        "connection-refused": "visible_error",
    }
    assert report["silent_truncations"] == 4
    details = {r["fault"]: r["detail"] for r in report["results"]}
    assert details["cut-mid-answer"] == (
        "ended normally (finish_reason 'stop', [DONE]), but it holds 95 of the 236 expected "
        "characters"
    )
    assert "the call's arguments are" in details["cut-in-tool-call"]
    assert details["unavailable-503"].startswith("HTTP 503: conformance: the service")


async def test_the_table_names_each_fault_and_counts_the_silent_truncations(
    upstreams_port: int,
) -> None:
    async with naive_gateway(Ports.from_base(upstreams_port)) as url:
        code, out, _ = await conformance("run", url, "--upstreams-port", str(upstreams_port))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"gateway {url}"
    assert lines[2].split() == ["fault", "outcome", "detail"]
    assert lines[3].split()[:2] == ["cut-mid-answer", "silent_truncation"]
    assert lines[-1] == "4 silent truncation(s) (4 silent_truncation, 5 visible_error)"
