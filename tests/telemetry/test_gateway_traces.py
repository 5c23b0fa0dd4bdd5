"""OpenTelemetry from `polyroute serve` (issue 26, parts 2 and 3): a SERVER span per
request (refusals too) continuing the client's ``traceparent``, the attempt's CLIENT
span named upstream, the GenAI metrics; turned on by ``telemetry:`` or the standard
variables and by nothing else; a collector that is down never reaches a request."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from polyroute import ConfigError, TelemetryConfig, Tracing, load_config
from polyroute.server.run import gateway_tracing
from polyroute.telemetry.config import telemetry_in_service
from tests.server.helpers import Process, gateway
from tests.telemetry.receiver import OTLPReceiver, ReceivedSpan
from tests.upstreams.openai import OpenAIUpstream

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "20", "OTEL_METRIC_EXPORT_INTERVAL": "100"}
"""The SDK's own variables: spans and metrics leave within a moment, not 5 s and 60 s."""
KEY = "pr-telemetry-test-key"


def _config(folder: Path, upstream: OpenAIUpstream, **extra: Any) -> Path:
    entry = {"name": "up", "type": "openai", "base_url": upstream.base_url, "models": ["m"]}
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump({"providers": [entry], "retry": {"attempts": 1}, **extra}))
    return path


async def _chat(
    served: Process, request_id: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{served.url}/v1/chat/completions",
            json=body,
            headers={"x-request-id": request_id, **(headers or {})},
        ) as answer,
    ):
        return answer.status, await answer.text()


def _span_of(request_id: str) -> Any:
    def found(receiver: OTLPReceiver) -> ReceivedSpan | None:
        return receiver.request_span(request_id)

    return found


async def test_a_gateway_request_is_a_server_span_that_continues_the_clients_trace(
    tmp_path: Path, receiver: OTLPReceiver, openai_upstream: OpenAIUpstream
) -> None:
    telemetry = {"otlp_endpoint": receiver.url, "service_name": "edge"}
    keys = {"keys": [{"name": "ci", "key_env": "TELEMETRY_KEY"}]}
    config = _config(tmp_path, openai_upstream, telemetry=telemetry, gateway=keys)
    client = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    async with gateway(config, env={**FAST_EXPORT, "TELEMETRY_KEY": KEY}) as served:
        authorized = {"Authorization": f"Bearer {KEY}", **client}
        status, text = await _chat(served, "gw-1", authorized)
        assert status == 200
        assert "Hello" in text
        assert (await _chat(served, "gw-refused", client))[0] == 401
        request = await receiver.wait_for(_span_of("gw-1"))
        refused = await receiver.wait_for(_span_of("gw-refused"))
        await receiver.wait_for(lambda found: found.children(request))
    assert served.code == 0
    assert (request.name, request.kind) == ("POST /v1/chat/completions", "server")
    assert (request.trace_id, request.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)
    assert request.resource["service.name"] == "edge"
    assert request.attributes["http.route"] == "/v1/chat/completions"
    assert request.attributes["http.request.method"] == "POST"
    assert request.attributes["polyroute.key"] == "ci"
    (attempt,) = receiver.children(request)
    assert (attempt.name, attempt.kind) == ("chat m", "client")
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    assert attempt.attributes["polyroute.entry"] == "up"
    (sent,) = openai_upstream.requests
    assert sent.headers["traceparent"] == f"00-{CLIENT_TRACE}-{attempt.span_id}-01"
    # The refusal is a request too: a server span of the client's trace, in error.
    assert (refused.kind, refused.trace_id) == ("server", CLIENT_TRACE)
    assert refused.attributes["error.type"] == "invalid_api_key"
    assert refused.is_error
    assert receiver.children(refused) == []


async def test_the_standard_variables_turn_tracing_and_metrics_on(
    tmp_path: Path, receiver: OTLPReceiver, openai_upstream: OpenAIUpstream
) -> None:
    variables = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "from-env"}
    async with gateway(
        _config(tmp_path, openai_upstream), env={**FAST_EXPORT, **variables}
    ) as served:
        assert (await _chat(served, "env-1"))[0] == 200
        request = await receiver.wait_for(_span_of("env-1"))
        points = await receiver.wait_for(
            lambda found: [p for p in found.points if p.metric == "gen_ai.client.token.usage"]
        )
    assert served.code == 0
    assert request.resource["service.name"] == "from-env"
    assert request.trace_id != CLIENT_TRACE
    assert request.parent_span_id == ""
    assert {point.attributes["gen_ai.token.type"] for point in points} == {"input", "output"}


async def test_a_gateway_whose_collector_is_down_serves_and_stops_cleanly(
    tmp_path: Path, receiver: OTLPReceiver, openai_upstream: OpenAIUpstream
) -> None:
    down = receiver.url
    await receiver.stop()
    config = _config(tmp_path, openai_upstream, telemetry={"otlp_endpoint": down})
    quick = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    async with gateway(config, env=quick) as served:
        statuses = [(await _chat(served, f"down-{n}"))[0] for n in range(5)]
    assert statuses == [200] * 5
    assert served.code == 0
    assert any("Failed to export" in line for line in served.stderr), served.stderr[-5:]


def test_nothing_is_traced_without_telemetry_or_an_endpoint_variable() -> None:
    configured = TelemetryConfig(otlp_endpoint="http://collector:4318")
    assert telemetry_in_service(None, {}) is None
    assert telemetry_in_service(None, {"OTEL_SERVICE_NAME": "x"}) is None
    assert telemetry_in_service(configured, {}) is configured
    from_env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}
    assert telemetry_in_service(None, from_env) == TelemetryConfig()
    disabled = {**from_env, "OTEL_SDK_DISABLED": "true"}
    assert telemetry_in_service(configured, disabled) is None
    assert gateway_tracing(None, {}) is None


def test_the_telemetry_section_is_checked_with_its_key_paths() -> None:
    providers = [{"name": "sim", "type": "simulated"}]
    telemetry = {"otlp_endpoint": "http://c:4318/", "sample_ratio": 0.25}
    config = load_config({"providers": providers, "telemetry": telemetry})
    assert config.telemetry is not None
    assert config.telemetry.signal_url("traces") == "http://c:4318/v1/traces"
    with pytest.raises(ConfigError, match=r"telemetry\.sample_ratio"):
        load_config({"providers": providers, "telemetry": {"sample_ratio": 2}})
    with pytest.raises(ConfigError, match=r"telemetry\.otlp_endpoint: expected an http"):
        load_config({"providers": providers, "telemetry": {"otlp_endpoint": "collector:4318"}})
    with pytest.raises(ConfigError, match=r"telemetry\.endpoint: unknown key"):
        load_config({"providers": providers, "telemetry": {"endpoint": "http://c:4318"}})


def test_telemetry_without_the_otel_extra_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if `polyroute[otel]` were not installed: the SDK's exporters cannot be imported
    # (and polyroute's modules that import them are imported anew).
    for module in ("polyroute.telemetry.pipeline", "polyroute.telemetry.otlp"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    for exporter in ("trace_exporter", "metric_exporter"):
        monkeypatch.setitem(sys.modules, f"opentelemetry.exporter.otlp.proto.http.{exporter}", None)
    with pytest.raises(ConfigError, match=r"pip install 'polyroute\[otel\]'"):
        Tracing({"otlp_endpoint": "http://127.0.0.1:4318"})
    configured = TelemetryConfig(otlp_endpoint="http://127.0.0.1:4318")
    with pytest.raises(ConfigError, match="telemetry: OpenTelemetry is not installed"):
        gateway_tracing(configured, {})
    # Only the variables set (for another program, perhaps): the gateway says so, and serves.
    with capture_logs() as logs:
        assert gateway_tracing(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) is None
    assert [log["event"] for log in logs] == ["telemetry.unavailable"]
