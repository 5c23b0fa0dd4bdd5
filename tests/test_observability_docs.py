"""docs/observability.md as written: its library examples run and print what the page
says (the tracing one's trace reaching a real OTLP/HTTP receiver), its configs load, its
JSON record is the record's one shape, and its commands, calls and SQL run against a
real gateway with a SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path

import aiohttp
import yaml

from polyroute import RequestRecord, TelemetryConfig, load_config
from tests.server.helpers import ADMIN_KEY, admin, eventually, gateway
from tests.telemetry.receiver import OTLPReceiver
from tests.test_docs import blocks, run_python

PAGE = Path(__file__).resolve().parent.parent / "docs" / "observability.md"


async def test_the_library_example_prints_what_the_page_says(tmp_path: Path) -> None:
    example, _ = blocks(PAGE, "python")
    shown = next(block for block in blocks(PAGE, "text") if block.startswith("complete"))
    assert await run_python(example, cwd=tmp_path) == shown


async def test_the_tracing_example_sends_its_trace_to_a_collector(tmp_path: Path) -> None:
    _, example = blocks(PAGE, "python")
    shown = next(block for block in blocks(PAGE, "text") if block.startswith("served:"))
    receiver = await OTLPReceiver().start()
    try:
        code = example.replace("http://127.0.0.1:4318", receiver.url)
        assert await run_python(code, cwd=tmp_path) == shown
    finally:
        await receiver.stop()  # the example sent everything as it ended
    (request,) = [span for span in receiver.spans if span.kind == "internal"]
    assert (request.name, request.resource["service.name"]) == ("chat m", "notebook")
    assert request.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert request.parent_span_id == "00f067aa0ba902b7"
    (attempt,) = receiver.children(request)
    assert attempt.attributes["polyroute.entry"] == "sim"
    assert {point.metric for point in receiver.points} == {
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
    }


def test_the_telemetry_config_loads_as_the_page_says() -> None:
    _, snippet = blocks(PAGE, "yaml")
    providers = [{"name": "sim", "type": "simulated"}]
    config = load_config({"providers": providers, **yaml.safe_load(snippet)})
    assert config.telemetry == TelemetryConfig(
        otlp_endpoint="http://127.0.0.1:4318", service_name="polyroute-edge", sample_ratio=0.25
    )
    assert config.telemetry.signal_url("metrics") == "http://127.0.0.1:4318/v1/metrics"


def test_the_config_loads_with_the_defaults_it_names() -> None:
    snippet, _ = blocks(PAGE, "yaml")
    providers = [{"name": "sim", "type": "simulated"}]
    config = load_config({"providers": providers, **yaml.safe_load(snippet)})
    assert config.logs.model_dump() == type(config.logs)().model_dump()  # each a default
    assert (config.logs.enabled, config.logs.retention_days) == (True, 30)
    assert config.gateway.log_content is False


def test_the_record_shown_is_the_one_json_shape() -> None:
    (shown,) = blocks(PAGE, "json")
    data = json.loads(shown)
    assert RequestRecord.from_json(data).as_json() == data
    assert list(RequestRecord.from_json(data).as_json()) == list(data)


async def test_the_commands_calls_and_sql_run_against_a_gateway(tmp_path: Path) -> None:
    commands, calls = (block for block in blocks(PAGE, "bash"))
    config = {
        "providers": [{"name": "sim", "type": "simulated", "models": ["gpt-4o-mini"],
                       "options": {"latency": {"first_chunk_ms": 0, "chunk_gap_ms": 0}}}],
        "store": {"backend": "sqlite", "path": str(tmp_path / "polyroute.db")},
        "gateway": {"admin_key_env": "POLYROUTE_ADMIN_KEY"},
    }  # fmt: skip
    path = tmp_path / "polyroute.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "POLYROUTE_CONFIG"}
    env["POLYROUTE_ADMIN_KEY"] = ADMIN_KEY
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    outputs: list[str] = []
    async with (
        gateway(path, env={"POLYROUTE_ADMIN_KEY": ADMIN_KEY}) as served,
        aiohttp.ClientSession() as session,
    ):
        status, made = await admin(session, served.url, "POST", "/admin/keys", {"name": "ci"})
        assert status == 201
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
        headers = {"x-request-id": "req-1", "Authorization": f"Bearer {made['key']}"}
        async with session.post(
            f"{served.url}/v1/chat/completions", json=body, headers=headers
        ) as answer:
            assert answer.status == 200

        async def logged() -> bool:
            status, _ = await admin(session, served.url, "GET", "/admin/requests/req-1")
            return status == 200

        await eventually(logged, within=10)
        for block in (commands, calls):
            for command in block.replace("http://127.0.0.1:8000", served.url).splitlines():
                process = await asyncio.create_subprocess_shell(
                    command, cwd=tmp_path, env=env,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, err = await asyncio.wait_for(process.communicate(), 60)
                assert process.returncode == 0, (command, err.decode())
                outputs.append(out.decode())
    assert served.code == 0
    listed, filtered, by_model, remote, shown, page, one = outputs
    assert listed.strip().endswith("1 attempt  req-1")
    assert "key=ci  gpt-4o-mini -> sim  " in listed
    assert filtered == ""  # nothing failed
    assert json.loads(by_model)["id"] == "req-1"
    assert remote == listed
    assert shown.startswith("id        req-1\n")
    assert json.loads(page) == {"object": "list", "data": [], "next_cursor": None}
    assert json.loads(one) == json.loads(by_model)
    (query,) = blocks(PAGE, "sql")
    with sqlite3.connect(tmp_path / "polyroute.db") as db:
        rows = db.execute(query).fetchall()
    assert [row[:3] for row in rows] == [("ci", "complete", 1)]
