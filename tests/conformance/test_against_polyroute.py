"""`polyroute conformance run` against a real `polyroute serve` started with the config
`polyroute conformance config` prints: no silent truncation, each fault's expected outcome."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import openai

from polyroute.conformance.configs import polyroute_config
from polyroute.conformance.faults import Ports, expected_text, prompt
from polyroute.conformance.upstreams import Upstreams
from tests.conformance.command import conformance
from tests.server.helpers import gateway

EXPECTED = {
    "cut-mid-answer": "continued",
    "cut-in-tool-call": "complete",  # tool_calls: atomic retries a cut call whole
    "stall-before-first-chunk": "complete",
    "stall-after-first-chunk": "continued",
    "malformed-chunk": "continued",
    "error-event": "continued",
    "rate-limited-429": "complete",
    "unavailable-503": "complete",
    "connection-refused": "complete",
}


async def test_polyroute_serve_with_the_printed_config_never_truncates_silently(
    tmp_path: Path, upstreams_port: int
) -> None:
    config = tmp_path / "conformance.yaml"
    config.write_text(polyroute_config(Ports.from_base(upstreams_port), "conformance"))
    async with gateway(config) as served:
        code, out, err = await conformance(
            "run", f"{served.url}/v1", "--upstreams-port", str(upstreams_port), "--json"
        )
    assert served.code == 0
    assert code == 0, (out, err)
    report = json.loads(out)
    assert report["silent_truncations"] == 0
    assert {r["fault"]: r["outcome"] for r in report["results"]} == EXPECTED, out
    continued = next(r for r in report["results"] if r["fault"] == "cut-mid-answer")
    assert "continued it after 95 characters (instruction)" in continued["detail"]


async def test_the_official_client_reads_the_relayed_answers_as_the_suite_does(
    tmp_path: Path, upstreams_port: int
) -> None:
    """The suite's own client is plain aiohttp: the openai SDK, reading the same faults
    through the same gateway, gets the same whole answer to the character."""
    ports = Ports.from_base(upstreams_port)
    config = tmp_path / "conformance.yaml"
    config.write_text(polyroute_config(ports, "conformance"))
    async with gateway(config) as served, Upstreams(ports) as upstreams:
        client = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key="unused")

        async def answer(fault: str) -> str:
            stream = await client.chat.completions.create(
                model=f"conformance-{fault}",
                messages=[{"role": "user", "content": prompt(fault)}],
                stream=True,
            )
            pieces = []
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    upstreams.exchanges[fault].reached_client.set()
                    pieces.append(chunk.choices[0].delta.content)
            return "".join(pieces)

        faults = ["cut-mid-answer", "malformed-chunk", "error-event"]
        texts = await asyncio.gather(*(answer(fault) for fault in faults))
        await client.close()
    assert texts == [expected_text(fault) for fault in faults]
    assert all(upstreams.exchanges[fault].continuations for fault in faults)
