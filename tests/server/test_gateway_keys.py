"""Gateway keys, per-key models and limits, the access log and /metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest
import yaml

from tests.cli.helpers import run_cli
from tests.server.helpers import gateway
from tests.upstreams.openai import OpenAIUpstream

HI = [{"role": "user", "content": "Hi"}]
TEAM_KEY = "gw-team-key-5d1f0e9a8c7b"
LIMITED_KEY = "gw-limited-key-a1b2c3d4e5"


@pytest.fixture
def config(tmp_path: Path, openai_upstream: OpenAIUpstream) -> Path:
    entry = {"name": "up", "type": "openai", "base_url": openai_upstream.base_url}
    keys = [
        {"name": "team", "key_env": "GW_TEAM_KEY"},
        {"name": "limited", "key_env": "GW_LIMITED_KEY", "models": ["fast"], "rpm": 2},
    ]
    data = {
        "providers": [{**entry, "models": ["m", "other"]}],
        "aliases": {"fast": "m"},
        "gateway": {"keys": keys},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
async def served(config: Path) -> AsyncIterator[str]:
    env = {"GW_TEAM_KEY": TEAM_KEY, "GW_LIMITED_KEY": LIMITED_KEY}
    async with gateway(config, "-v", "--log-format", "json", env=env) as process:
        yield process.url
    assert process.code == 0
    log = "\n".join(process.stderr)
    assert TEAM_KEY not in log
    assert LIMITED_KEY not in log
    events = [json.loads(line) for line in process.stderr if line.startswith("{")]
    access = [event for event in events if event["event"] == "gateway.request"]
    assert access
    assert {event["key"] for event in access} <= {"team", "limited", None}
    assert all("messages" not in event for event in access)  # no content by default
    assert all(event["duration_ms"] > 0 for event in access)
    # One id per request, in the gateway's access log and in every routing event.
    done = {event["request_id"] for event in events if event["event"] == "route.done"}
    served = {event["request_id"] for event in access if event["status"] == "200"}
    assert served
    assert served == done


def client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


async def test_keys_models_and_limits(served: str) -> None:
    async with client(served, "wrong-key") as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(model="m", messages=HI)
        with pytest.raises(openai.AuthenticationError):
            await stranger.models.list()
    async with client(served, TEAM_KEY) as team:
        answer = await team.chat.completions.create(model="other", messages=HI)
        assert answer.choices[0].message.content == "Hello, world!"
    async with client(served, LIMITED_KEY) as limited:
        with pytest.raises(openai.PermissionDeniedError):
            await limited.chat.completions.create(model="other", messages=HI)
        for _ in range(2):
            await limited.chat.completions.create(model="fast", messages=HI)
        with pytest.raises(openai.RateLimitError) as over:
            await limited.chat.completions.create(model="fast", messages=HI)
    retry_after = int(over.value.response.headers["Retry-After"])
    assert 1 <= retry_after <= 60


async def test_metrics_count_requests_attempts_and_time_to_first_token(served: str) -> None:
    async with client(served, TEAM_KEY) as team:
        await team.chat.completions.create(model="m", messages=HI)
        with pytest.raises(openai.NotFoundError):
            await team.chat.completions.create(model="nope", messages=HI)
    async with aiohttp.ClientSession() as session, session.get(f"{served}/metrics") as response:
        text = await response.text()
    assert 'polyroute_requests_total{endpoint="chat",model="m",status="200"} 1.0' in text
    assert 'polyroute_requests_total{endpoint="chat",model="(unknown)",status="404"} 1.0' in text
    assert 'polyroute_attempts_total{outcome="ok",provider="up"} 1.0' in text
    assert "polyroute_time_to_first_token_seconds_count 1.0" in text
    assert "polyroute_in_flight_requests 0.0" in text
    assert 'polyroute_circuit_open{provider="up"} 0.0' in text
    assert "polyroute_relays_total 0.0" in text
    assert TEAM_KEY not in text


async def test_a_public_host_without_keys_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open.yaml"
    entry = {"name": "a", "type": "openai", "base_url": "http://127.0.0.1:9/v1"}
    path.write_text(yaml.safe_dump({"providers": [entry]}))
    result = await run_cli("serve", "-c", str(path), "--host", "0.0.0.0", cwd=tmp_path)
    assert result.code == 2
    assert "refusing to serve on 0.0.0.0 with no gateway keys" in result.err


async def test_a_missing_key_variable_is_a_config_error(config: Path, tmp_path: Path) -> None:
    result = await run_cli("serve", "-c", str(config), cwd=tmp_path)
    assert result.code == 2
    assert "environment variable GW_TEAM_KEY (key_env) is not set" in result.err


async def test_keys_and_limits_hold_on_messages_and_responses_in_their_own_words(
    served: str,
) -> None:
    """The same keys, models and rpm on /v1/messages (x-api-key or Bearer, Anthropic's
    error objects) and /v1/responses (OpenAI's); both endpoints are labelled."""

    def claude(key: str, **kwargs: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=served, max_retries=0, api_key=key, **kwargs)

    async with claude("wrong-key") as stranger:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await stranger.messages.create(model="m", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    async with claude(TEAM_KEY) as team:  # x-api-key
        answer = await team.messages.create(model="m", max_tokens=5, messages=HI)  # type: ignore[arg-type]
        assert answer.content[0].text == "Hello, world!"  # type: ignore[union-attr]
    bearer = anthropic.AsyncAnthropic(base_url=served, max_retries=0, auth_token=TEAM_KEY)
    async with bearer:
        await bearer.messages.create(model="m", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    async with claude(LIMITED_KEY) as limited:
        with pytest.raises(anthropic.PermissionDeniedError):
            await limited.messages.create(model="other", max_tokens=5, messages=HI)  # type: ignore[arg-type]
        for _ in range(2):
            await limited.messages.create(model="fast", max_tokens=5, messages=HI)  # type: ignore[arg-type]
        with pytest.raises(anthropic.RateLimitError) as over:
            await limited.messages.create(model="fast", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    assert 1 <= int(over.value.response.headers["retry-after"]) <= 60
    assert over.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    async with client(served, "wrong-key") as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.responses.create(model="m", input="Hi")
    async with client(served, TEAM_KEY) as team:
        response = await team.responses.create(model="m", input="Hi", store=False)
        assert response.output_text == "Hello, world!"
    async with aiohttp.ClientSession() as session, session.get(f"{served}/metrics") as metrics:
        text = await metrics.text()
    assert 'polyroute_requests_total{endpoint="messages",model="m",status="200"} 2.0' in text
    assert 'polyroute_requests_total{endpoint="messages",model="fast",status="429"} 1.0' in text
    assert 'polyroute_requests_total{endpoint="responses",model="m",status="200"} 1.0' in text


async def test_a_key_lists_only_the_models_it_may_use(served: str) -> None:
    async with client(served, LIMITED_KEY) as limited:
        assert [model.id async for model in limited.models.list()] == ["fast"]
        with pytest.raises(openai.NotFoundError):
            await limited.models.retrieve("other")
    async with client(served, TEAM_KEY) as team:
        assert [model.id async for model in team.models.list()] == ["fast", "m", "other"]
        await team.chat.completions.create(model="m", messages=HI)  # the fixture checks its log
