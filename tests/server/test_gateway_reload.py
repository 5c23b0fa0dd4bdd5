"""Reloading the config file without a restart (issue 25, part 6): SIGHUP and
``POST /admin/reload`` re-read it; entries, aliases, keys and budgets change, requests
in flight finish on the config they started with, a broken file changes nothing and
says why, what needs a restart keeps its running value. Real ``polyroute serve``
processes in front of real local upstreams."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from polyroute.core.errors import ConfigError
from polyroute.router.config import load_config
from tests.server.helpers import ADMIN_KEY, eventually, free_port, gateway
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script
from tests.upstreams.server import RecordedRequest

HI = [{"role": "user", "content": "Hi"}]
TEXT = ["Hello", ", ", "world", "!"]


class GatedUpstream(OpenAIUpstream):
    """Streams its first chunk at once, the rest once ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__(models=["m"])
        self.gate = asyncio.Event()

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        script = self.default
        await response.write(self.encode_chunk(0, TEXT[0], script, record.body))
        await self.gate.wait()
        for index, text in enumerate(TEXT[1:], 1):
            await response.write(self.encode_chunk(index, text, script, record.body))
        await response.write(self.encode_end(script, record.body))
        await response.write_eof()
        return response


def entry(name: str, upstream: OpenAIUpstream, *models: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "base_url": upstream.base_url,
            "models": list(models), **keys}  # fmt: skip


def write(path: Path, *providers: dict[str, Any], **settings: Any) -> Path:
    path.write_text(yaml.safe_dump({"providers": list(providers), **settings}))
    return path


async def chat(
    session: aiohttp.ClientSession, url: str, model: str, key: str | None = None, **body: Any
) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    payload = {"model": model, "messages": HI, **body}
    async with session.post(f"{url}/v1/chat/completions", json=payload, headers=headers) as r:
        return r.status, dict(r.headers), await r.json()


def start_error(path: Path) -> str:
    """What ``polyroute serve -c path`` would stop on at start."""
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    return str(refused.value)


async def models(session: aiohttp.ClientSession, url: str) -> set[str]:
    async with session.get(f"{url}/v1/models") as answer:
        return {model["id"] for model in (await answer.json())["data"]}


async def test_sighup_serves_a_new_entry_and_alias(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    second = await OpenAIUpstream(models=["n"]).start()
    try:
        path = write(tmp_path / "gateway.yaml", entry("one", openai_upstream, "m"))
        async with gateway(path) as served, aiohttp.ClientSession() as session:
            assert await models(session, served.url) == {"m"}
            write(path, entry("one", openai_upstream, "m"), entry("two", second, "n"),
                  aliases={"fast": "n"})  # fmt: skip
            served.process.send_signal(signal.SIGHUP)
            await served.said("polyroute: reloaded")
            assert await models(session, served.url) == {"m", "n", "fast"}
            status, headers, _ = await chat(session, served.url, "fast")
            assert (status, headers["x-polyroute-provider"]) == (200, "two")
            status, headers, _ = await chat(session, served.url, "m")
            assert (status, headers["x-polyroute-provider"]) == (200, "one")
        assert any("entries added: two" in line for line in served.stderr)
        assert served.code == 0
    finally:
        await second.stop()


async def test_a_stream_in_flight_finishes_on_the_entry_it_started_on(tmp_path: Path) -> None:
    old, new = await GatedUpstream().start(), await OpenAIUpstream(models=["m"]).start()
    try:
        path = write(tmp_path / "gateway.yaml", entry("old", old, "m"))
        body = {"model": "m", "messages": HI, "stream": True}
        async with (
            gateway(path) as served,
            aiohttp.ClientSession() as session,
            session.post(f"{served.url}/v1/chat/completions", json=body) as stream,
        ):
            first = await stream.content.readuntil(b"\n\n")
            write(path, entry("new", new, "m"))  # "old" is gone from the file
            served.process.send_signal(signal.SIGHUP)
            await served.said("polyroute: reloaded")
            status, headers, _ = await chat(session, served.url, "m")
            assert (status, headers["x-polyroute-provider"]) == (200, "new")
            old.gate.set()
            events = [
                line[6:] for line in (first + await stream.read()).decode().splitlines()
                if line.startswith("data: ")
            ]  # fmt: skip
            assert events[-1] == "[DONE]"
            chunks = [json.loads(event) for event in events[:-1]]
            text = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
            )
            assert text == "".join(TEXT)
            assert chunks[-1]["polyroute"]["provider"] == "old"
            # Its last request over, the removed entry's connection pool is closed.
            upstream = old._runner.server  # type: ignore[union-attr]

            async def closed() -> bool:
                return not upstream.connections  # type: ignore[union-attr]

            await eventually(closed, 5)
        assert len(old.requests) == 1
        assert served.code == 0
    finally:
        await old.stop()
        await new.stop()


async def test_a_broken_file_keeps_the_running_config_and_says_why(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    path = write(tmp_path / "gateway.yaml", entry("one", openai_upstream, "m"))
    async with (
        gateway(path, "-v", "--log-format", "json") as served,
        aiohttp.ClientSession() as session,
    ):
        path.write_text("providers: [\n  {name: one\n")  # unclosed
        syntax = start_error(path)
        served.process.send_signal(signal.SIGHUP)
        seen = await served.said("reload failed, still serving the previous config")
        assert (await chat(session, served.url, "m"))[0] == 200
        write(path, entry("one", openai_upstream, "m", priorty=1))
        unknown = start_error(path)
        served.process.send_signal(signal.SIGHUP)
        await served.said("providers.0.priorty: unknown key", after=seen)
        assert (await chat(session, served.url, "m"))[0] == 200
        assert await models(session, served.url) == {"m"}
    assert f"{path}:2:3" in syntax  # where the file breaks off
    assert "did you mean `priority`?" in unknown
    said = "\n".join(line for line in served.stderr if not line.startswith("{"))
    for error in (syntax, unknown):  # as at start, the line and its caret included
        assert f"polyroute: reload failed, still serving the previous config: {error}" in said
    events = [json.loads(line) for line in served.stderr if line.startswith("{")]
    failed = [event["error"] for event in events if event["event"] == "gateway.reload_failed"]
    assert failed == [syntax, unknown]
    assert served.code == 0


async def test_budgets_spend_and_key_windows_survive_a_reload(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    """Memory state: what alpha spent and its requests of this minute are still counted
    after the reload, under its new budget."""
    usage = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
    openai_upstream.default = Script(usage=usage)
    cost = (1000 * 2.0 + 200 * 8.0) / 1e6
    worst = (1 * 2.0 + 500 * 8.0) / 1e6  # max_tokens 500, a one-token prompt
    priced = entry("priced", openai_upstream, "m", price={"input": 2.0, "output": 8.0})

    def settings(usd: float) -> dict[str, Any]:
        key = {"name": "alpha", "key_env": "ALPHA_KEY", "rpm": 3,
               "budget": {"usd": usd, "period": "day"}}  # fmt: skip
        return {"gateway": {"keys": [key]}}

    path = write(tmp_path / "gateway.yaml", priced, **settings(0.02))
    secret = "pr-alpha-0123456789"
    async with (
        gateway(path, env={"ALPHA_KEY": secret}) as served,
        aiohttp.ClientSession() as session,
    ):

        def remaining() -> Any:
            async def read() -> float | None:
                async with session.get(f"{served.url}/metrics") as answer:
                    text = await answer.text()
                for line in text.splitlines():
                    if line.startswith('polyroute_budget_remaining_usd{scope="key:alpha"}'):
                        return float(line.split()[-1])
                return None

            return read

        async def settled_at(usd: float) -> Any:
            async def check() -> bool:
                return await remaining()() == pytest.approx(usd)

            return await eventually(check, 5)

        for _ in range(2):
            assert (await chat(session, served.url, "m", secret, max_tokens=500))[0] == 200
        await settled_at(0.02 - 2 * cost)
        write(path, priced, entry("spare", openai_upstream, "n"), **settings(0.05))
        served.process.send_signal(signal.SIGHUP)
        await served.said("polyroute: reloaded")
        status, headers, _ = await chat(session, served.url, "m", secret, max_tokens=500)
        assert status == 200
        left = float(headers["x-polyroute-budget-remaining-usd"])
        assert left == pytest.approx(0.05 - 2 * cost - worst)  # not 0.05 - worst: kept
        await settled_at(0.05 - 3 * cost)
        status, _, body = await chat(session, served.url, "m", secret, max_tokens=500)
        assert status == 429  # its rpm of 3: the minute's requests were kept too
        assert "requests per minute" in body["error"]["message"]
    assert served.code == 0


async def test_admin_reload_says_what_changed_and_refuses_a_broken_file(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    spare = await OpenAIUpstream(models=["n"]).start()
    env = {"ADMIN_KEY": ADMIN_KEY, "ONE_KEY": "pr-one-0123456789", "TWO_KEY": "pr-two-0123456789"}
    gateway_keys: dict[str, Any] = {"admin_key_env": "ADMIN_KEY"}
    path = write(
        tmp_path / "gateway.yaml",
        entry("one", openai_upstream, "m"),
        entry("gone", openai_upstream, "m"),
        gateway={**gateway_keys, "keys": [{"name": "one", "key_env": "ONE_KEY"}]},
    )
    try:
        async with (
            gateway(path, "-v", "--log-format", "json", env=env) as served,
            aiohttp.ClientSession() as session,
        ):
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

            async def reload() -> tuple[int, Any]:
                async with session.post(f"{served.url}/admin/reload", headers=admin) as answer:
                    return answer.status, await answer.json()

            keys = [{"name": "two", "key_env": "TWO_KEY", "models": ["n"]}]
            write(
                path,
                entry("one", openai_upstream, "m", priority=5),
                entry("new", spare, "n"),
                gateway={**gateway_keys, "keys": keys},
                state={"backend": "redis", "url": f"redis://127.0.0.1:{free_port()}/0"},
                aliases={"fast": "n"},
            )
            status, summary = await reload()
            assert status == 200
            assert summary["entries"] == {"added": ["new"], "removed": ["gone"], "changed": ["one"]}
            assert summary["keys"] == {"added": ["two"], "removed": ["one"], "changed": []}
            assert summary["settings"] == ["aliases"]
            assert summary["needs_restart"] == ["state"]
            async with session.get(f"{served.url}/readyz") as ready:
                assert (await ready.json())["state"] == "memory (this process only)"
            status, headers, _ = await chat(session, served.url, "fast", env["TWO_KEY"])
            assert (status, headers["x-polyroute-provider"]) == (200, "new")
            assert (await chat(session, served.url, "m", env["ONE_KEY"]))[0] == 401

            write(path, entry("one", openai_upstream, "m", weight=-1))
            status, refusal = await reload()
            assert status == 400
            assert set(refusal["error"]) == {"message", "type", "param", "code"}
            assert "providers.0.weight" in refusal["error"]["message"]
            assert (await chat(session, served.url, "fast", env["TWO_KEY"]))[0] == 200
        events = [json.loads(line) for line in served.stderr if line.startswith("{")]
        restart = [event for event in events if event["event"] == "gateway.reload_needs_restart"]
        assert [event["keys"] for event in restart] == [["state"]]
        assert served.code == 0
    finally:
        await spare.stop()


async def test_sighup_to_the_parent_reloads_every_worker(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    path = write(tmp_path / "gateway.yaml", entry("one", openai_upstream, "m"))
    async with gateway(path, "--workers", "2") as served:
        write(path, entry("one", openai_upstream, "m"), aliases={"fast": "m"})
        served.process.send_signal(signal.SIGHUP)
        reloaded: dict[int, bool] = {}

        async def both() -> bool:
            # One connection for both requests: the same worker answers them.
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                async with session.get(f"{served.url}/healthz") as health:
                    pid = (await health.json())["pid"]
                reloaded[pid] = "fast" in await models(session, served.url)
            return len(reloaded) == 2 and all(reloaded.values())

        await eventually(both, 10)
    assert sum("polyroute: reloaded" in line for line in served.stderr) == 2
    assert served.code == 0


async def test_reloads_under_load_fail_no_request(
    tmp_path: Path, openai_upstream: OpenAIUpstream
) -> None:
    """Streams keep coming while the entry serving them is swapped four times: each one
    ends whole, on the entry it started on."""
    openai_upstream.default = Script(chunks=["a"] * 10, delay=0.005)
    path = write(tmp_path / "gateway.yaml", entry("one", openai_upstream, "m"))
    body = {"model": "m", "messages": HI, "stream": True}
    async with gateway(path) as served, aiohttp.ClientSession() as session:
        gate = asyncio.Semaphore(20)

        async def stream() -> tuple[str, str]:
            async with gate, session.post(f"{served.url}/v1/chat/completions", json=body) as r:
                events = [
                    line[6:] for line in (await r.text()).splitlines() if line[:6] == "data: "
                ]
            assert events[-1] == "[DONE]"
            chunks = [json.loads(event) for event in events[:-1]]
            text = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
            )
            return text, chunks[-1]["polyroute"]["provider"]

        load = [asyncio.create_task(stream()) for _ in range(120)]
        seen = 0
        for name in ("two", "one", "two", "one"):
            write(path, entry(name, openai_upstream, "m"))
            served.process.send_signal(signal.SIGHUP)
            seen = await served.said("polyroute: reloaded", after=seen)
        answers = await asyncio.gather(*load)
    assert {text for text, _ in answers} == {"a" * 10}
    assert {provider for _, provider in answers} == {"one", "two"}
    assert served.code == 0
