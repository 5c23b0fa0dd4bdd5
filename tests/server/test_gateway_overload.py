"""The gateway's own trouble is its own: out of file descriptors (a file limit lowered
with ``resource.setrlimit`` in the gateway's process), out of connection slots to an
entry, or too far behind on its event loop, a request fails with a 503 to retry
(``GatewayOverloaded``), never against the entry's health or circuit, and shown in
/metrics apart from the upstreams' failures; /readyz stays ready once it is over."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from polyroute import AllProvidersFailed, GatewayOverloaded, Router, UpstreamTimeout
from polyroute.core.overload import LOOP_LAG
from tests.server.helpers import eventually, gateway
from tests.server.raw_http import RawConnection, request_bytes
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

HI = [{"role": "user", "content": "Hi"}]
CHAT = json.dumps({"model": "m", "messages": HI}).encode()
FILES = 48
"""The gateway's file limit: a few dozen connections use it up."""


def config_for(
    tmp_path: Path, upstream: OpenAIUpstream, entry: dict[str, Any] | None = None, **gateway: Any
) -> Path:
    base = {"name": "up", "type": "openai", "base_url": upstream.base_url, "models": ["m"]}
    data = {
        "providers": [{**base, **(entry or {})}],
        "retry": {"attempts": 1},
        "cooldown": {"failures": 1},  # one failure counted against it would cool it
        "gateway": gateway,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def figures(url: str) -> tuple[int, dict[str, Any], str]:
    """/readyz's status and body, and /metrics."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/readyz") as ready:
            readiness = ready.status, await ready.json()
        async with session.get(f"{url}/metrics") as metrics:
            return *readiness, await metrics.text()


async def test_out_of_file_descriptors_is_a_503_to_retry_and_no_entry_cools_down(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    # Limits set past what the file limit holds, on purpose: the derived defaults
    # would refuse connections before the descriptors ran out.
    config = config_for(
        tmp_path, openai_upstream, max_connections=500, max_in_flight=100, header_timeout_s=120
    )
    async with gateway(config, files=FILES) as served:
        pid = served.process.pid
        probe = await RawConnection.open(served.url)
        flood = [await RawConnection.open(served.url) for _ in range(FILES + 8)]

        async def exhausted() -> bool:
            return open_files(pid) >= FILES

        await eventually(exhausted, 20)
        await probe.send(request_bytes("POST", "/v1/chat/completions", CHAT))
        refused = await probe.answer()
        for connection in flood:
            connection.close()

        async def recovered() -> bool:
            return open_files(pid) < FILES // 2

        await eventually(recovered, 20)
        await probe.send(request_bytes("POST", "/v1/chat/completions", CHAT))
        answer = await probe.answer()
        probe.close()
        status, readiness, metrics = await figures(served.url)
    assert refused.status == 503
    assert refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "gateway_overloaded"
    assert "file descriptors" in error["message"]
    assert answer.status == 200
    assert len(openai_upstream.requests) == 1  # only the second reached it
    assert status == 200
    assert readiness["unavailable"] == {}  # not cooling down: it was not its fault
    assert 'polyroute_gateway_overloaded_total{cause="file_descriptors"} 1.0' in metrics
    assert 'polyroute_attempts_total{outcome="gateway_overloaded",provider="up"} 1.0' in metrics
    assert 'polyroute_attempts_total{outcome="failed",provider="up"}' not in metrics
    assert 'polyroute_circuit_open{provider="up"} 0.0' in metrics
    # Accepting paused while the descriptors were out, without a traceback (asyncio's
    # own loop wrote one per connection it tried, thousands a second).
    assert not any("Traceback" in line for line in served.stderr), served.stderr
    assert served.code == 0


async def test_no_connection_slot_in_time_is_the_gateways_own_timeout(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    openai_upstream.default = Script(chunks=["a", "b"], stall_after=1)
    entry = {"connection_limit": 1, "timeouts": {"first_chunk": 0.5}}
    async with gateway(config_for(tmp_path, openai_upstream, entry)) as served:
        async with aiohttp.ClientSession() as session:
            body = {"model": "m", "messages": HI, "stream": True}
            async with session.post(f"{served.url}/v1/chat/completions", json=body) as held:
                await held.content.readuntil(b"\n\n")  # it holds the one connection
                async with session.post(
                    f"{served.url}/v1/chat/completions", json={"model": "m", "messages": HI}
                ) as waiting:
                    refused = waiting.status, await waiting.json()
        status, readiness, metrics = await figures(served.url)
    assert refused[0] == 503
    assert refused[1]["error"]["code"] == "gateway_overloaded"
    assert "connection_limit" in refused[1]["error"]["message"]
    assert len(openai_upstream.requests) == 1
    assert status == 200
    assert readiness["unavailable"] == {}
    assert 'polyroute_gateway_overloaded_total{cause="connection_slot"} 1.0' in metrics


def block_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # the event loop held, as by a CPU-bound burst of other requests


@pytest.mark.parametrize("lagging", [True, False])
async def test_a_first_chunk_timeout_behind_a_lagging_loop_is_not_the_upstreams(
    openai_upstream: OpenAIUpstream, lagging: bool
) -> None:
    openai_upstream.default = Script(chunks=["a"], stall_after=0)  # never a first chunk
    entry = {"name": "up", "type": "openai", "base_url": openai_upstream.base_url}
    config = {
        "providers": [{**entry, "models": ["m"], "timeouts": {"first_chunk": 0.3}}],
        "retry": {"attempts": 1},
        "cooldown": {"failures": 1},
    }
    LOOP_LAG.start()
    try:
        async with Router.from_config(config) as router:
            if lagging:
                asyncio.get_running_loop().call_later(0.05, block_the_loop, 0.5)
            with pytest.raises(AllProvidersFailed) as failed:
                async for _ in router.stream("m", HI):
                    pass
            cooling = {status.name: status.cooling_down for status in router.entry_status()}
    finally:
        LOOP_LAG.stop()
    attempt = failed.value.attempts[0]
    if lagging:
        assert isinstance(attempt.error, GatewayOverloaded)
        assert attempt.error.cause == "loop_lag"
        assert attempt.outcome == "gateway_overloaded"
        assert cooling == {"up": False}
    else:  # the control: the same timeout with the loop on time is the upstream's
        assert isinstance(attempt.error, UpstreamTimeout)
        assert attempt.outcome == "failed"
        assert cooling == {"up": True}
