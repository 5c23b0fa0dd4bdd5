"""The first day with the gateway: it tells what it serves (a 404 listing its endpoints,
aliases marked in /v1/models, OpenAI's 400 for a request without a model, a 413 naming
its setting), keeps /metrics and /readyz behind a key when asked, names itself
`polyroute` and nothing more, and its `-v` log tells concurrent requests apart."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from polyroute.core.console import HumanRenderer
from polyroute.core.logging import new_request_id
from tests.cli.helpers import run_cli
from tests.server.helpers import ADMIN_KEY, eventually, free_port, gateway

HI = [{"role": "user", "content": "Hi"}]
GATEWAY_KEY = "gw-first-day-key-0123456789"
LIMITED_KEY = "gw-first-day-limited-98765"
INSTANT = {"words": 5, "latency": {"first_chunk_ms": 0, "chunk_gap_ms": 0}}


def write(folder: Path, **gateway_settings: Any) -> Path:
    """A config of one simulated entry serving ``m`` (alias ``relay-me``), with
    ``gateway_settings``."""
    data = {
        "providers": [{"name": "sim", "type": "simulated", "models": ["m"], "options": INSTANT}],
        "default_model": "m",
        "aliases": {"relay-me": "m"},
        "gateway": gateway_settings,
    }
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def call(
    session: aiohttp.ClientSession, method: str, url: str, **options: Any
) -> tuple[int, dict[str, str], Any]:
    async with session.request(method, url, **options) as answer:
        body = await answer.json() if answer.content_type == "application/json" else None
        return answer.status, dict(answer.headers), body


# What it serves -----------------------------------------------------------------------


async def test_a_path_it_does_not_serve_gets_openais_404_listing_what_it_serves(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    config = write(tmp_path, admin_key_env="ADMIN_KEY")
    async with gateway(config, env={"ADMIN_KEY": ADMIN_KEY}) as served:
        status, headers, body = await call(session, "GET", f"{served.url}/v1/chat/complete")
        wrong_method = await call(session, "GET", f"{served.url}/v1/chat/completions")
    assert status == 404
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        None,
        "not_found",
    )
    assert error["message"].startswith(
        "Invalid URL (GET /v1/chat/complete): this gateway serves POST /v1/chat/completions, "
        "POST /v1/messages, "
    )
    for endpoint in ("POST /v1/responses", "GET /v1/models", "GET /healthz", "GET /metrics"):
        assert endpoint in error["message"]
    assert "/admin" not in error["message"]  # the admin API is no client's business
    assert "HEAD" not in error["message"]
    assert headers["Server"] == "polyroute"
    assert wrong_method[0] == 405
    assert wrong_method[2]["error"]["message"] == (
        "Method Not Allowed (GET /v1/chat/completions): use POST"
    )


async def test_models_are_the_keys_own_and_an_alias_says_what_it_stands_for(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    keys = [
        {"name": "team", "key_env": "FD_TEAM_KEY"},
        {"name": "ci", "key_env": "FD_CI_KEY", "models": ["relay-me"]},
    ]
    env = {"FD_TEAM_KEY": GATEWAY_KEY, "FD_CI_KEY": LIMITED_KEY}
    async with gateway(write(tmp_path, keys=keys), env=env) as served:
        url = f"{served.url}/v1/models"
        team = await call(session, "GET", url, headers={"Authorization": f"Bearer {GATEWAY_KEY}"})
        ci = await call(session, "GET", url, headers={"Authorization": f"Bearer {LIMITED_KEY}"})
        one = await call(
            session, "GET", f"{url}/relay-me", headers={"Authorization": f"Bearer {LIMITED_KEY}"}
        )
        nobody = await call(session, "GET", url)
    alias = {
        "id": "relay-me",
        "object": "model",
        "created": 0,
        "owned_by": "polyroute",
        "polyroute": {"alias_of": "m"},
    }
    model = {"id": "m", "object": "model", "created": 0, "owned_by": "polyroute"}
    assert team[2] == {"object": "list", "data": [model, alias]}
    assert ci[2] == {"object": "list", "data": [alias]}
    assert one[2] == alias
    assert nobody[0] == 401


async def test_a_request_without_a_model_is_openais_400_unless_the_config_says_otherwise(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    chat = {"messages": HI}
    async with gateway(write(tmp_path)) as served:
        status, _, body = await call(
            session, "POST", f"{served.url}/v1/chat/completions", json=chat
        )
        embeddings = await call(session, "POST", f"{served.url}/v1/embeddings", json={"input": "x"})
        messages = await call(
            session, "POST", f"{served.url}/v1/messages", json={**chat, "max_tokens": 9}
        )
    assert status == 400
    assert body == {
        "error": {
            "message": "you must provide a model parameter",
            "type": "invalid_request_error",
            "param": "model",
            "code": "missing_required_parameter",
        }
    }
    assert (embeddings[0], embeddings[2]) == (400, body)
    assert messages[0] == 400
    assert messages[2] == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "you must provide a model parameter"},
    }
    kept = write(tmp_path, default_model_when_missing=True)
    async with gateway(kept) as served:
        status, headers, answer = await call(
            session, "POST", f"{served.url}/v1/chat/completions", json=chat
        )
    assert status == 200
    assert answer["choices"][0]["message"]["content"].startswith("[simulated sim]")
    assert headers["x-polyroute-model"] == "m"


async def test_a_body_over_the_limit_is_told_the_limit_and_its_setting(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with gateway(write(tmp_path, max_body_bytes=1024)) as served:
        big = [{"role": "user", "content": "x" * 2048}]
        status, headers, body = await call(
            session,
            "POST",
            f"{served.url}/v1/chat/completions",
            json={"model": "m", "messages": big},
        )
    assert status == 413
    assert body["error"]["message"] == (
        "the request body is larger than this gateway's limit of 1024 bytes "
        "(gateway.max_body_bytes)"
    )
    assert body["error"]["code"] == "request_too_large"
    assert headers["Server"] == "polyroute"


async def test_every_answer_names_polyroute_and_no_versions(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with gateway(write(tmp_path)) as served:
        answers = [
            await call(session, "GET", f"{served.url}/v1/models"),
            await call(session, "GET", f"{served.url}/healthz"),
            await call(session, "GET", f"{served.url}/metrics"),
            await call(session, "POST", f"{served.url}/v1/chat/completions", data=b"{"),
            await call(
                session,
                "POST",
                f"{served.url}/v1/chat/completions",
                json={"model": "m", "messages": HI, "stream": True},
            ),
        ]
        # A request line no HTTP parser takes: answered by aiohttp, before the app.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", int(served.url.rsplit(":", 1)[1])
        )
        writer.write(b"GARBAGE /\x00 HTTP/1.1\r\n\r\n")
        malformed = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    assert [status for status, _, _ in answers] == [200, 200, 200, 400, 200]
    assert answers[-1][1]["Content-Type"] == "text/event-stream"
    for _, headers, _ in answers:
        assert headers["Server"] == "polyroute"
    head = malformed.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.0 400")
    assert "Server: polyroute" in head.split("\r\n")
    assert "aiohttp" not in head
    assert "Python" not in head


# /metrics and /readyz behind a key ------------------------------------------------------


async def test_protected_metrics_and_readiness_need_a_gateway_or_the_admin_key(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    config = write(
        tmp_path,
        protect_metrics=True,
        admin_key_env="ADMIN_KEY",
        keys=[{"name": "team", "key_env": "FD_TEAM_KEY"}],
    )
    env = {"ADMIN_KEY": ADMIN_KEY, "FD_TEAM_KEY": GATEWAY_KEY}
    async with gateway(config, env=env) as served:
        statuses: dict[tuple[str, str], int] = {}
        for path in ("/metrics", "/readyz", "/healthz"):
            for who, key in (("none", None), ("wrong", "nope"), ("key", GATEWAY_KEY),
                             ("admin", ADMIN_KEY)):  # fmt: skip
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                status, _, body = await call(session, "GET", served.url + path, headers=headers)
                statuses[path, who] = status
                if status == 401:
                    message = body["error"]["message"]
                    assert message.startswith(f"{path} needs a gateway key or the admin key")
    assert statuses == {
        **{("/metrics", who): 401 for who in ("none", "wrong")},
        **{("/metrics", who): 200 for who in ("key", "admin")},
        **{("/readyz", who): 401 for who in ("none", "wrong")},
        **{("/readyz", who): 200 for who in ("key", "admin")},
        **{("/healthz", who): 200 for who in ("none", "wrong", "key", "admin")},
    }


async def test_protected_metrics_with_no_key_to_open_them_is_refused_at_start(
    tmp_path: Path,
) -> None:
    config = write(tmp_path, protect_metrics=True)
    result = await run_cli("serve", "-c", str(config), "--port", str(free_port()), cwd=tmp_path)
    assert result.code == 2
    assert result.err.splitlines()[-1] == (
        "polyroute: gateway.protect_metrics: no key could open /metrics and /readyz: "
        "configure gateway.keys, a store: or gateway.admin_key_env"
    )


# The log on a terminal ------------------------------------------------------------------


def test_the_access_line_reads_as_one_sentence() -> None:
    plain = HumanRenderer(colors=False, request_ids=True)
    fields = {
        "event": "gateway.request",
        "level": "info",
        "request_id": "3f9a61c2e0d4b5a6c7d8",
        "endpoint": "chat",
        "key": "ci",
        "model": "relay-me",
        "provider": "secondary",
        "status": "200",
        "ttft_ms": 154.2,
        "duration_ms": 774.4,
        "prompt_tokens": None,
        "completion_tokens": 20,
        "cost_usd": None,
    }
    assert plain(None, "info", fields) == (
        "3f9a61c2  200 relay-me -> secondary 774 ms, ttft 154 ms, 20 tokens, key ci"
    )
    refused = {**fields, "status": "401", "provider": None, "ttft_ms": None, "key": None}
    refused.update(completion_tokens=None, endpoint="messages", duration_ms=0.4)
    assert plain(None, "info", refused) == "3f9a61c2  401 relay-me 0 ms (messages)"
    priced = {**fields, "prompt_tokens": 12, "cost_usd": 0.00042}
    assert plain(None, "info", priced).endswith("ttft 154 ms, 12+20 tokens, $0.00042, key ci")
    coloured = HumanRenderer(colors=True)
    assert coloured(None, "info", {**fields, "status": "502"}).startswith("\x1b[31m502 ")
    assert coloured(None, "info", {**fields, "status": "429"}).startswith("\x1b[33m429 ")
    assert "\x1b[" not in coloured(None, "info", fields)


def test_request_ids_differ_in_their_first_eight_characters() -> None:
    ids = [new_request_id() for _ in range(10_000)]
    assert len({request_id[:8] for request_id in ids}) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{20}", request_id) for request_id in ids)


class Terminal:
    """A pseudo-terminal for a subprocess's stderr, read on a thread as it comes."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        os.close(self.slave)  # the child has its copy: end of file once it exits
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the other side closed
                return
            if not chunk:
                return
            self.chunks.append(chunk)

    @property
    def lines(self) -> list[str]:
        return b"".join(self.chunks).decode(errors="replace").replace("\r\n", "\n").splitlines()

    async def said(self, pattern: str, within: float = 30.0) -> list[str]:
        async def matching() -> list[str] | None:
            found = [line for line in self.lines if re.search(pattern, line)]
            return found or None

        found, _ = await eventually(matching, within)
        return found

    def close(self) -> None:
        self._reader.join(timeout=30)
        os.close(self.master)


async def test_on_a_terminal_every_line_of_a_request_starts_with_its_short_id(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    port = free_port()
    terminal = Terminal()
    environment = {k: v for k, v in os.environ.items() if k != "POLYROUTE_CONFIG"}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "polyroute", "serve", "-c", str(write(tmp_path))),
        *("--port", str(port), "-v"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=terminal.slave,
        env={**environment, "NO_COLOR": "1"},
    )
    terminal.start()
    try:
        await terminal.said("polyroute: serving on")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"

        async def ask(request_id: str | None) -> str:
            headers = {"x-request-id": request_id} if request_id else {}
            body = {"model": "relay-me", "messages": HI, "stream": True}
            async with session.post(url, json=body, headers=headers) as answer:
                await answer.read()
                return answer.headers["x-request-id"]

        given, generated = await asyncio.gather(ask("aaaabbbb-client-1"), ask(None))
        for request_id in (given, generated):
            short = request_id[:8]
            access = rf"^{short}  200 relay-me -> sim \d+ ms, ttft \d+ ms, \d+ tokens$"
            await terminal.said(access)
            assert await terminal.said(rf"^{short}  relay-me = m: sim$")
            assert await terminal.said(rf"^{short}  done \d+ chars, 1 attempt, ")
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 30)
        terminal.close()
    assert code == 0
    assert given.startswith("aaaabbbb")
    for line in terminal.lines:  # no JSON, and no line of a request without its id
        assert line.startswith("polyroute: ") or re.match(r"^[0-9a-z]{8}  \S", line), line


async def test_redirected_the_access_log_is_json_with_the_whole_id(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with gateway(write(tmp_path), "-v") as served:
        body = {"model": "relay-me", "messages": HI}
        url = f"{served.url}/v1/chat/completions"
        async with session.post(url, json=body) as answer:
            request_id = answer.headers["x-request-id"]
        await served.said('"event": "gateway.request"')
    access = [line for line in served.stderr if '"gateway.request"' in line]
    assert f'"request_id": "{request_id}"' in access[0]
