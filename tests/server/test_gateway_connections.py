"""The gateway's client connections: a request's headers and body must arrive in time,
an idle kept-alive connection is closed, connections past the limit are refused at once
(and those admitted go on), the listen backlog is the configured one. Raw sockets play
the slow and silent clients."""

from __future__ import annotations

import json
import select
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from polyroute.router.config import GatewayConfig
from polyroute.server.connections import ConnectionGuard, listen
from polyroute.server.dialects.errors import WireError
from polyroute.server.limits import DEFAULT_MAX_IN_FLIGHT, RESERVED_FDS, limits_for
from tests.server.helpers import gateway
from tests.server.raw_http import RawConnection, request_bytes
from tests.upstreams.openai import OpenAIUpstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


def config_for(tmp_path: Path, upstream: OpenAIUpstream, **settings: Any) -> Path:
    entry = {"name": "up", "type": "openai", "base_url": upstream.base_url, "models": ["m"]}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"providers": [entry], "gateway": settings}))
    return path


async def test_a_silent_connection_is_closed_at_the_header_timeout(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    config = config_for(tmp_path, openai_upstream, header_timeout_s=0.3, keepalive_s=600)
    async with gateway(config) as served:
        silent = await RawConnection.open(served.url)
        # Closed with nothing said (there was no request to answer); the keep-alive
        # timeout, 600 s, cannot be what closed it.
        assert await silent.closed_by_peer() == b""
        silent.close()
    assert served.code == 0


async def test_half_a_request_gets_a_408_in_its_endpoints_shape_and_is_closed(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    config = config_for(tmp_path, openai_upstream, header_timeout_s=0.3, keepalive_s=600)
    async with gateway(config) as served:
        slow = await RawConnection.open(served.url)
        await slow.send(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        answer = await slow.answer()
        assert await slow.closed_by_peer() == b""
        slow.close()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{served.url}/readyz") as ready:
                gateway_load = (await ready.json())["gateway"]
            async with session.get(f"{served.url}/metrics") as metrics:
                text = await metrics.text()
    assert answer.status == 408
    assert answer.headers["connection"] == "close"
    error = answer.json()
    assert error["type"] == "error"  # Anthropic's shape, as /v1/messages speaks
    assert "gateway.header_timeout_s" in error["error"]["message"]
    assert gateway_load["header_timeouts"] == 1
    assert 'polyroute_client_timeouts_total{phase="headers"} 1.0' in text


async def test_a_kept_alive_connections_next_request_has_its_own_header_timeout(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    # One clock serves a connection's requests: it must run again for each of them,
    # from when that request's first bytes came.
    config = config_for(tmp_path, openai_upstream, header_timeout_s=0.3, keepalive_s=600)
    async with gateway(config) as served:
        client = await RawConnection.open(served.url)
        body = json.dumps({**CHAT, "stream": False}).encode()
        await client.send(request_bytes("POST", "/v1/chat/completions", body))
        first = await client.answer()
        await client.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        second = await client.answer()
        assert await client.closed_by_peer() == b""
        client.close()
    assert first.status == 200
    assert second.status == 408
    assert "gateway.header_timeout_s" in second.json()["error"]["message"]


async def test_a_body_that_stops_coming_gets_a_408_and_the_connection_closes(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    config = config_for(tmp_path, openai_upstream, body_timeout_s=0.3)
    async with gateway(config) as served:
        slow = await RawConnection.open(served.url)
        head = request_bytes("POST", "/v1/chat/completions", b"x" * 100)
        await slow.send(head[: len(head) - 90])  # the headers, and 10 bytes of 100
        answer = await slow.answer()
        assert await slow.closed_by_peer() == b""
        slow.close()
    assert answer.status == 408
    assert answer.headers["connection"] == "close"
    assert answer.json()["error"]["code"] == "request_timeout"
    assert "gateway.body_timeout_s" in answer.json()["error"]["message"]
    assert openai_upstream.requests == []


async def test_an_idle_kept_alive_connection_is_closed_after_keepalive_s(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    config = config_for(tmp_path, openai_upstream, header_timeout_s=600, keepalive_s=0.3)
    async with gateway(config) as served:
        client = await RawConnection.open(served.url)
        await client.send(request_bytes("POST", "/v1/chat/completions", json.dumps(CHAT).encode()))
        answer = await client.answer()
        assert answer.status == 200
        assert answer.headers.get("connection") != "close"  # kept alive...
        assert await client.closed_by_peer() == b""  # ...until idle too long
        client.close()


async def test_connections_past_the_limit_are_refused_at_once_and_the_admitted_go_on(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    config = config_for(tmp_path, openai_upstream, max_connections=4, header_timeout_s=600)
    async with gateway(config) as served:
        silent = [await RawConnection.open(served.url) for _ in range(3)]
        admitted = await RawConnection.open(served.url)  # the fourth
        await admitted.send(request_bytes("GET", "/readyz"))
        load = (await admitted.answer()).json()["gateway"]
        assert load["connections"] == 4
        refused = await RawConnection.open(served.url)
        said = await refused.closed_by_peer()
        refused.close()
        # The admitted connection is still served, after the refusal.
        await admitted.send(
            request_bytes("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
        )
        answer = await admitted.answer()
        for connection in [*silent, admitted]:
            connection.close()
    head, _, body = said.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: 1" in head
    assert b"Connection: close" in head
    assert b"gateway.max_connections" in body
    assert answer.status == 200
    assert len(openai_upstream.requests) == 1


def test_the_derived_limits_leave_room_for_upstreams_under_the_file_limit() -> None:
    limits = limits_for(GatewayConfig(), files=1024, queue_cap=4096)
    assert limits.max_in_flight == DEFAULT_MAX_IN_FLIGHT
    # A connection each, two upstream descriptors per request in flight, the reserve.
    assert limits.max_connections + 2 * DEFAULT_MAX_IN_FLIGHT + RESERVED_FDS == 1024
    low = limits_for(GatewayConfig(), files=256, queue_cap=4096)
    assert low.max_connections + 2 * (low.max_in_flight or 0) + RESERVED_FDS <= 256
    assert limits_for(GatewayConfig(max_in_flight=0), files=1024).max_in_flight is None
    told = limits_for(GatewayConfig(max_connections=5000), files=1024)
    assert told.max_connections == 5000
    assert "over the process's limit of 1024" in told.warnings[0]


def test_the_backlog_is_the_configured_one_capped_by_somaxconn() -> None:
    assert limits_for(GatewayConfig(), queue_cap=4096).backlog == 2048
    assert limits_for(GatewayConfig(), queue_cap=1024).backlog == 1024
    assert limits_for(GatewayConfig(backlog=64), queue_cap=None).backlog == 64


@pytest.mark.parametrize("backlog", [4, 16])
async def test_the_listener_queues_as_many_connections_as_its_backlog(backlog: int) -> None:
    """While the gateway's loop does not accept (it is this test's, and busy here), the
    kernel completes backlog + 1 connections and leaves the rest waiting."""
    app = aiohttp.web.Application()
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    limits = limits_for(GatewayConfig(backlog=backlog), files=None, queue_cap=None)
    guard = ConnectionGuard(limits, 10.0, lambda _path, status, _text, code: WireError(status, {}))
    assert runner.server is not None
    listener = listen(runner.server, guard, "127.0.0.1", 0, reuse_port=False, handler_args={})
    port = listener.address[1]
    clients = []
    try:
        for _ in range(backlog + 6):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            clients.append(client)
        _, connected, _ = select.select([], clients, [], 0.5)
        assert len(connected) == backlog + 1
    finally:
        for client in clients:
            client.close()
        listener.close()
        await runner.cleanup()


def test_the_guide_lists_every_limit_with_its_default() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()
    section = guide.split("## Limits and overload", 1)[1].split("\n## ", 1)[0]
    defaults = GatewayConfig()
    for key in ("header_timeout_s", "body_timeout_s", "keepalive_s", "backlog"):
        assert f"| `{key}` | `{getattr(defaults, key):g}` |" in section, key
    assert f"| `max_in_flight` | `{DEFAULT_MAX_IN_FLIGHT}`" in section
    for key in ("max_connections", "max_loop_lag_ms", "max_body_bytes", "drain_seconds"):
        assert f"| `{key}` |" in section, key
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert GatewayConfig.model_validate(example["gateway"])
