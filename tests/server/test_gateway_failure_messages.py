"""What the gateway tells a client when something fails: each cause once, by entry,
with the status and the URL that answered; codes in snake_case; a lone surrogate
refused with a 400 on every dialect."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import yaml

from tests.server.helpers import gateway
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.asyncio(loop_scope="module")
HI = [{"role": "user", "content": "Hi"}]
BUSY = Script(status=503, error_body='{"error": {"message": "overloaded"}}')


@dataclass
class Served:
    url: str
    first: OpenAIUpstream
    second: OpenAIUpstream


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    first, second = await OpenAIUpstream().start(), await OpenAIUpstream().start()
    entries = [
        {"name": name, "type": "openai", "base_url": upstream.base_url, "models": ["m"]}
        for name, upstream in (("first", first), ("second", second))
    ]
    settings = {
        "retry": {"attempts": 2, "backoff_initial": 0},
        "cooldown": {"failures": 1000},
        "on_midstream_failure": "raise",
    }
    config = Path(tmp_path_factory.mktemp("failures")) / "gateway.yaml"
    config.write_text(yaml.safe_dump({"providers": entries, **settings}))
    try:
        async with gateway(config) as process:
            yield Served(process.url, first, second)
    finally:
        await first.stop()
        await second.stop()
    assert process.code == 0


@pytest.fixture(autouse=True)
def fresh_scripts(served: Served) -> None:
    for upstream in (served.first, served.second):
        upstream.reset()


async def post(url: str, body: dict[str, object] | bytes) -> tuple[int, dict[str, object]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_the_502_names_each_entry_once_with_its_attempts_status_and_url(
    served: Served,
) -> None:
    served.first.default = served.second.default = BUSY
    status, body = await post(f"{served.url}/v1/chat/completions", {"model": "m", "messages": HI})
    assert status == 502
    error = body["error"]
    assert isinstance(error, dict)
    assert (error["type"], error["code"]) == ("upstream_error", "all_providers_failed")
    assert error["message"] == (
        "all providers failed for model 'm'\n"
        f"  - first (m, 2 attempts): HTTP 503 from {served.first.base_url}/chat/completions: "
        "overloaded\n"
        f"  - second (m, 2 attempts): HTTP 503 from {served.second.base_url}/chat/completions: "
        "overloaded"
    )
    assert len(served.first.requests) == len(served.second.requests) == 2


async def test_a_stream_cut_mid_answer_says_so_with_a_snake_case_code(served: Served) -> None:
    served.first.default = Script(chunks=["Hel", "lo", ", world"], reset_after=2)
    body = {"model": "m", "messages": HI, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{served.url}/v1/chat/completions", json=body) as response,
    ):
        text = (await response.read()).decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_connection_error"
    assert error["message"] == "first: the upstream closed the connection after 5 characters"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", '),
        ("/v1/messages", b'{"model": "m", "max_tokens": 9, "messages": [{"role": "user", '),
        ("/v1/responses", b'{"model": "m", "input": [{"role": "user", '),
    ],
    ids=["chat", "messages", "responses"],
)
async def test_a_lone_surrogate_in_the_content_is_a_400(
    served: Served, path: str, body: bytes
) -> None:
    # The escape as a client's JSON encoder writes it (json.dumps("\ud800")), which no
    # UTF-8 string can hold: refused before any upstream is asked.
    status, answer = await post(f"{served.url}{path}", body + b'"content": "\\ud800"}]}')
    assert status == 400
    error = answer["error"]
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error"
    assert "lone surrogate" in str(error["message"])
    assert served.first.requests == served.second.requests == []
