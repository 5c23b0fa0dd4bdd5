"""What a first-day reader asks of a simulated upstream: it stops at `max_tokens` as a
model does, lists its models as OpenAI does, and `polyroute simulate` prints the URL a
config takes (an openai entry's `base_url`), not the endpoint."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from polyroute import Router
from polyroute.core.errors import PortInUseError
from polyroute.simulator.profile import SimulatedUpstream
from polyroute.simulator.server import SimulatorServer
from tests.cli.helpers import start_simulate

HI = [{"role": "user", "content": "Hi"}]
FAST = {"first_chunk_ms": 0, "chunk_gap_ms": 0}


@pytest.fixture
async def openai_sim() -> AsyncIterator[SimulatorServer]:
    profile = SimulatedUpstream(name="sim", format="openai", words=10, latency=FAST)  # type: ignore[arg-type]
    server = await SimulatorServer(profile).start()
    yield server
    await server.stop()


async def test_max_tokens_ends_the_answer_with_finish_reason_length(
    openai_sim: SimulatorServer,
) -> None:
    config = {
        "providers": [
            {"name": "sim", "type": "openai", "base_url": openai_sim.config_url, "models": ["m"]}
        ]
    }
    async with Router.from_config(config) as router:
        async with router.stream("m", HI, max_tokens=4) as cut:
            cut_text = "".join([text async for text in cut])
        async with router.stream("m", HI) as whole:
            whole_text = "".join([text async for text in whole])
        async with router.stream("m", HI, max_tokens=500) as roomy:
            roomy_text = "".join([text async for text in roomy])
    assert cut.finish_reason == "length"
    assert cut.usage is not None
    assert cut.usage.completion_tokens == 4
    assert whole_text.startswith(cut_text)
    assert len(cut_text.split()) == 2 + 3  # the tag's two words, then three of the answer
    assert (whole.finish_reason, roomy.finish_reason) == ("stop", "stop")
    assert roomy_text == whole_text


async def test_max_completion_tokens_counts_as_max_tokens(openai_sim: SimulatorServer) -> None:
    body = {"model": "m", "messages": HI, "max_completion_tokens": 1}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{openai_sim.config_url}/chat/completions", json=body) as answer,
    ):
        events = (await answer.text()).split("\n\n")
    assert '"finish_reason":"length"' in "".join(events)
    assert sum('"content":"[simulated sim]"' in event for event in events) == 1
    assert sum('"content":" ' in event for event in events) == 0  # no word past the tag


async def test_models_are_listed_in_openais_shape(openai_sim: SimulatorServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{openai_sim.config_url}/models") as answer,
    ):
        listed = await answer.json()
    assert answer.status == 200
    assert listed == {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "polyroute-simulator"}
            for name in ("sim-large", "sim-small")
        ],
    }
    config = {
        "providers": [
            {
                "name": "sim",
                "type": "openai",
                "base_url": openai_sim.config_url,
                "models": "discover",
            }
        ]
    }
    async with Router.from_config(config) as router:  # discovery reads that list
        await router.start()
        assert router.known_models() == ["sim-large", "sim-small"]


async def test_a_taken_port_is_a_port_in_use_error(openai_sim: SimulatorServer) -> None:
    profile = SimulatedUpstream(name="again", port=openai_sim.port)
    with pytest.raises(PortInUseError) as caught:
        await SimulatorServer(profile).start()
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", openai_sim.port)
    assert str(caught.value) == f"port {openai_sim.port} on 127.0.0.1 is in use; pass --port N"


async def test_simulate_prints_the_url_a_config_takes(tmp_path: Path) -> None:
    sim = tmp_path / "sim.yaml"
    sim.write_text("upstreams:\n  - {name: a, format: openai}\n  - {name: d, format: darkai}\n")
    process = await start_simulate(sim)
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        lines = [
            (await asyncio.wait_for(process.stdout.readline(), 30)).decode().split()
            for _ in range(2)
        ]
        note = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        # What was printed works as written in a config (base_url passes its check).
        config = {"providers": [{"name": "a", "type": "openai", "base_url": lines[0][2]}]}
        async with Router.from_config(config) as router:
            answer = await router.complete_text("m", HI)
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 30)
    assert code == 0
    (name, kind, base_url), (dark, dark_kind, endpoint) = lines
    assert (name, kind, dark, dark_kind) == ("a", "openai", "d", "darkai")
    assert base_url.startswith("http://127.0.0.1:")
    assert base_url.endswith("/v1")
    assert endpoint.startswith("http://127.0.0.1:")
    assert endpoint.endswith("/chat")
    assert "an openai or anthropic entry's base_url, a darkai entry's api_endpoint" in note
    assert answer.startswith("[simulated a]")
