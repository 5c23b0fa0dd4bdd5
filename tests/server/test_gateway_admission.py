"""The front door: past ``gateway.max_in_flight`` requests at once, a request gets a 503
with Retry-After in its endpoint's shape before any upstream call, counted as shed;
the requests admitted go on, and /readyz tells the gateway's saturation apart from its
entries'."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from polyroute.core.overload import LoopLag
from polyroute.router.config import GatewayConfig
from polyroute.server.admission import Admission
from polyroute.server.limits import DEFAULT_MAX_IN_FLIGHT
from tests.server.helpers import eventually, gateway
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

HI = [{"role": "user", "content": "Hi"}]
BURST = {
    "/v1/chat/completions": {"model": "m", "messages": HI},
    "/v1/messages": {"model": "m", "max_tokens": 16, "messages": HI},
    "/v1/responses": {"model": "m", "input": "Hi"},
    "/v1/embeddings": {"model": "m", "input": "Hi"},
}


def config_for(tmp_path: Path, upstream: OpenAIUpstream, **settings: Any) -> Path:
    entry = {"name": "up", "type": "openai", "base_url": upstream.base_url, "models": ["m"]}
    path = tmp_path / "gateway.yaml"
    data = {"providers": [entry], "retry": {"attempts": 1}, "gateway": settings}
    path.write_text(yaml.safe_dump(data))
    return path


async def test_a_burst_past_max_in_flight_is_shed_with_retry_after_before_any_upstream_call(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    openai_upstream.default = Script(chunks=["a", "b"], stall_after=1)  # held open
    config = config_for(tmp_path, openai_upstream, max_in_flight=4)
    async with gateway(config) as served, aiohttp.ClientSession() as session:
        url = served.url
        held = contextlib.AsyncExitStack()
        async with held:
            for _ in range(4):
                body = {"model": "m", "messages": HI, "stream": True}
                stream = await held.enter_async_context(
                    session.post(f"{url}/v1/chat/completions", json=body)
                )
                await stream.content.readuntil(b"\n\n")  # admitted, and streaming
            answers = {}
            for path, body in BURST.items():
                async with session.post(url + path, json=body) as refused:
                    answers[path] = (refused.status, refused.headers, await refused.json())
            async with session.get(f"{url}/readyz") as ready:
                readiness = (ready.status, await ready.json())
        # The four streams closed: room again.
        openai_upstream.default = Script()

        async def idle() -> bool:
            async with session.get(f"{url}/readyz") as ready:
                return (await ready.json())["gateway"]["in_flight"] == 0

        await eventually(idle, 10)
        async with session.post(
            f"{url}/v1/chat/completions", json=BURST["/v1/chat/completions"]
        ) as served_again:
            assert served_again.status == 200
        async with session.get(f"{url}/metrics") as metrics:
            text = await metrics.text()
    for path, (status, headers, error) in answers.items():
        assert status == 503, path
        assert headers["Retry-After"] == "1", path
        if path == "/v1/messages":  # Anthropic's shape
            assert error["type"] == "error"
            message = error["error"]["message"]
        else:  # OpenAI's, for chat completions, responses and embeddings
            assert error["error"]["code"] == "gateway_busy"
            message = error["error"]["message"]
        assert "gateway.max_in_flight" in message
    assert len(openai_upstream.requests) == 4 + 1  # the burst never reached it
    status, body = readiness
    assert status == 200  # the entries can serve: the gateway's own load is told apart
    assert body["unavailable"] == {}
    assert body["gateway"]["saturated"] is True
    assert body["gateway"]["in_flight"] == 4
    assert body["gateway"]["max_in_flight"] == 4
    for endpoint in ("chat", "messages", "responses", "embeddings"):
        line = f'polyroute_requests_shed_total{{endpoint="{endpoint}",reason="in_flight"}} 1.0'
        assert line in text
    assert "polyroute_max_in_flight 4.0" in text


class _Lagging(LoopLag):
    def __init__(self, lag_ms: float) -> None:
        super().__init__()
        self.lag_ms = lag_ms

    def recent_ms(self, window_s: float = 1.0) -> float:
        return self.lag_ms


def test_a_lagging_loop_sheds_only_with_max_loop_lag_ms() -> None:
    lagging = Admission(_Lagging(300.0), files=None)
    assert lagging.refuses(GatewayConfig(), in_flight=0) is None
    assert lagging.refuses(GatewayConfig(max_loop_lag_ms=200), in_flight=0) == "loop_lag"
    assert Admission(_Lagging(50.0), None).refuses(GatewayConfig(max_loop_lag_ms=200), 0) is None


def test_max_in_flight_zero_means_no_cap() -> None:
    admission = Admission(_Lagging(0.0), files=1024)
    cap = DEFAULT_MAX_IN_FLIGHT
    assert admission.refuses(GatewayConfig(), in_flight=cap - 1) is None
    assert admission.refuses(GatewayConfig(), in_flight=cap) == "in_flight"
    assert admission.refuses(GatewayConfig(max_in_flight=0), in_flight=10_000) is None


async def test_the_loop_lag_monitor_sees_the_loop_blocked() -> None:
    lag = LoopLag(period=0.02)
    lag.start()
    try:
        blocked = time.monotonic()
        time.sleep(0.3)  # noqa: ASYNC251 - the loop blocked (a CPU-bound burst) is what is measured
        assert lag.recent_ms() >= 250
        assert lag.behind_share(blocked) > 0.8
    finally:
        lag.stop()
    assert lag.recent_ms() == 0.0
