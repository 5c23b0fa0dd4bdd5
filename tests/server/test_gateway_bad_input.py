"""Bad bytes are the client's mistake: a header byte that is not ASCII, a malformed
``Authorization`` or ``Content-Length`` get a clear 400 or 401 in the endpoint's error
shape (never a plain-text 500), are counted as such, and an error never echoes a
client's value whole. Raw sockets send what HTTP clients refuse to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.server.helpers import gateway
from tests.server.raw_http import exchange, request_bytes
from tests.upstreams.openai import OpenAIUpstream

KEY = "pr-test-key-0123456789"
HI = [{"role": "user", "content": "Hi"}]
CHAT = json.dumps({"model": "m", "messages": HI}).encode()
MESSAGES = json.dumps({"model": "m", "max_tokens": 8, "messages": HI}).encode()
REQUESTS = [
    ("POST", "/v1/chat/completions", CHAT, "openai"),
    ("POST", "/v1/messages", MESSAGES, "anthropic"),
    ("POST", "/v1/responses", json.dumps({"model": "m", "input": "Hi"}).encode(), "openai"),
    ("GET", "/v1/models", b"", "openai"),
    ("GET", "/readyz", b"", "openai"),
]


def config_for(tmp_path: Path, upstream: OpenAIUpstream, keys: bool) -> Path:
    entry = {"name": "up", "type": "openai", "base_url": upstream.base_url, "models": ["m"]}
    settings: dict[str, Any] = {"protect_metrics": True} if keys else {}
    if keys:
        settings["keys"] = [{"name": "team", "key_env": "GATEWAY_TEST_KEY"}]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"providers": [entry], "gateway": settings}))
    return path


def message_of(body: Any, shape: str) -> str:
    if shape == "anthropic":
        assert body["type"] == "error"
    return str(body["error"]["message"])


@pytest.mark.parametrize("keys", [True, False], ids=["with-keys", "open"])
async def test_a_byte_not_ascii_in_authorization_is_a_401_on_every_endpoint(
    tmp_path: Path, openai_upstream: OpenAIUpstream, keys: bool
) -> None:
    env = {"GATEWAY_TEST_KEY": KEY}
    async with gateway(config_for(tmp_path, openai_upstream, keys), env=env) as served:
        answers = []
        for method, path, body, shape in REQUESTS:
            bad = {"Authorization": b"Bearer caf\xe9"}
            answer = await exchange(served.url, request_bytes(method, path, body, bad))
            answers.append((path, shape, answer))
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{served.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}) as m,
        ):
            metrics = await m.text()
    for path, shape, answer in answers:
        assert answer.status == 401, path
        assert answer.headers["content-type"].startswith("application/json"), path
        assert "not ASCII" in message_of(answer.json(), shape), path
    assert 'polyroute_requests_total{endpoint="chat",model="",status="401"} 1.0' in metrics
    assert 'status="cancelled"' not in metrics
    assert not any("Traceback" in line for line in served.stderr)
    assert openai_upstream.requests == []


async def test_other_headers_not_ascii_are_a_400_naming_the_header(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    async with gateway(config_for(tmp_path, openai_upstream, keys=False)) as served:
        headers = {"X-Title": b"caf\xc3\xa9 \xff"}
        chat = await exchange(
            served.url, request_bytes("POST", "/v1/chat/completions", CHAT, headers)
        )
        messages = await exchange(
            served.url, request_bytes("POST", "/v1/messages", MESSAGES, headers)
        )
    assert chat.status == 400
    assert chat.json()["error"]["code"] == "invalid_header"
    assert "X-Title" in chat.json()["error"]["message"]
    assert messages.status == 400
    assert messages.json()["error"]["type"] == "invalid_request_error"
    assert openai_upstream.requests == []


@pytest.mark.parametrize(
    ("authorization", "said"),
    [("Basic dXNlcjpwYXNz", "scheme is 'Basic'"), ("Bearer", "Bearer followed by one key")],
)
async def test_a_malformed_authorization_is_a_401_that_says_what_is_wrong(
    tmp_path: Path, openai_upstream: OpenAIUpstream, authorization: str, said: str
) -> None:
    env = {"GATEWAY_TEST_KEY": KEY}
    async with gateway(config_for(tmp_path, openai_upstream, keys=True), env=env) as served:
        headers = {"Authorization": authorization}
        answer = await exchange(
            served.url, request_bytes("POST", "/v1/chat/completions", CHAT, headers)
        )
    assert answer.status == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"
    assert said in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "shape"), [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")]
)
async def test_a_bad_content_length_is_a_400_in_the_endpoints_shape(
    tmp_path: Path, openai_upstream: OpenAIUpstream, path: str, shape: str
) -> None:
    async with gateway(config_for(tmp_path, openai_upstream, keys=False)) as served:
        answer = await exchange(
            served.url, request_bytes("POST", path, CHAT, {"Content-Length": "twelve"})
        )
    assert answer.status == 400
    assert answer.headers["content-type"].startswith("application/json")
    assert "malformed" in message_of(answer.json(), shape)
    # The client's mistake, not the server's: no ERROR traceback for it.
    assert not any("Traceback" in line for line in served.stderr)
    assert not any("Error handling request" in line for line in served.stderr)


async def test_an_error_echoes_a_clients_value_cut_to_a_sane_length(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    huge = "m" * 1_000_000
    async with gateway(config_for(tmp_path, openai_upstream, keys=False)) as served:
        body = json.dumps({"model": huge, "messages": HI}).encode()
        answer = await exchange(served.url, request_bytes("POST", "/v1/chat/completions", body))
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{served.url}/v1/models/{'x' * 5000}") as model,
        ):
            missing = await model.json()
    assert answer.status == 404
    message = answer.json()["error"]["message"]
    assert len(message) < 1000
    assert "more characters" in message
    assert len(missing["error"]["message"]) < 1000
