"""Simulated upstreams: wire formats, deterministic text and failures."""

from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletionChunk

from polyroute import (
    ConfigError,
    FinishDelta,
    Router,
    TextDelta,
    Timeouts,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeout,
    Usage,
    UsageDelta,
)
from polyroute.core.http import SessionOwner
from polyroute.providers import DarkAI, OpenAI
from polyroute.providers.simulated import Simulated
from polyroute.simulator.profile import SimulatedUpstream
from polyroute.simulator.server import SimulatorServer
from polyroute.simulator.text import answer_words, simulated_words, words_already_given

HI = [{"role": "user", "content": "Hi"}]


async def start(servers: list[SimulatorServer], **profile: object) -> SimulatorServer:
    server = await SimulatorServer(SimulatedUpstream(name="sim", **profile)).start()  # type: ignore[arg-type]
    servers.append(server)
    return server


FAST = {"latency": {"first_chunk_ms": 0, "chunk_gap_ms": 0}}


def test_text_is_tagged_and_depends_only_on_the_conversation() -> None:
    words = simulated_words("sim-a", "conversation", 10)
    assert words[0] == "[simulated sim-a]"
    assert len(words) == 11
    assert all(word.startswith(" ") for word in words[1:])
    assert words == simulated_words("sim-a", "conversation", 10)
    assert words[1:] == simulated_words("sim-b", "conversation", 10)[1:]
    assert words[1:] != simulated_words("sim-a", "another", 10)[1:]


def test_words_already_given_counts_whole_words_after_the_tag() -> None:
    words = answer_words("c", 6)
    partial = "[simulated x]" + "".join(words[:4])
    assert words_already_given(partial, words) == 4
    assert words_already_given("[simulated x]", words) == 0


async def test_openai_format_validates_as_official_chunks(started: list[SimulatorServer]) -> None:
    server = await start(started, format="openai", words=5, **FAST)
    owner = SessionOwner()
    async with owner.session.post(
        server.url,
        json={
            "model": "m",
            "messages": HI,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as response:
        body = (await response.read()).decode()
    await owner.aclose()
    payloads = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    for payload in payloads[:-1]:
        ChatCompletionChunk.model_validate_json(payload)


async def test_both_formats_stream_through_the_real_providers(
    started: list[SimulatorServer],
) -> None:
    dark = await start(started, format="darkai", words=6, **FAST)
    oa = await start(started, format="openai", words=6, **FAST)
    async with DarkAI(api_endpoint=dark.url) as d, OpenAI(api_endpoint=oa.url, models=[]) as o:
        dark_text = "".join([t async for t in d.create_async_generator("gpt-4o", HI)])
        oa_deltas = [delta async for delta in o.stream("m", HI)]
    oa_text = "".join(d.text for d in oa_deltas if isinstance(d, TextDelta))
    assert dark_text.startswith("[simulated sim]")
    assert len(dark_text.split()) == 2 + 6
    assert oa_text.startswith("[simulated sim]")
    assert FinishDelta("stop") in oa_deltas
    assert UsageDelta(Usage(0, 7, 7)) in oa_deltas


async def test_failure_shares_follow_the_profile_and_the_seed(
    started: list[SimulatorServer],
) -> None:
    profile = {
        "format": "darkai",
        "words": 1,
        "seed": 9,
        "failures": {"status": {503: 0.3, 429: 0.2}},
        **FAST,
    }
    outcomes: list[str] = []
    server = await start(started, **profile)
    async with DarkAI(api_endpoint=server.url) as provider:
        for _ in range(200):
            try:
                [t async for t in provider.create_async_generator("gpt-4o", HI)]
                outcomes.append("ok")
            except UpstreamStatusError as error:
                outcomes.append(str(error.status))
    assert set(outcomes) == {"ok", "503", "429"}
    assert 40 <= outcomes.count("503") <= 80
    assert 20 <= outcomes.count("429") <= 60
    # The same seed replays the same outcomes.
    again = await start(started, **profile)
    async with DarkAI(api_endpoint=again.url) as provider:
        replay = []
        for _ in range(20):
            try:
                [t async for t in provider.create_async_generator("gpt-4o", HI)]
                replay.append("ok")
            except UpstreamStatusError as error:
                replay.append(str(error.status))
    assert replay == outcomes[:20]


async def test_reset_and_mid_stream_drop_are_connection_errors(
    started: list[SimulatorServer],
) -> None:
    reset = await start(started, format="openai", failures={"reset": 1.0}, **FAST)
    drop = await start(
        started,
        format="darkai",
        words=10,
        failures={"drop_after": {"rate": 1, "chunks": 3}},
        **FAST,
    )
    async with OpenAI(api_endpoint=reset.url, models=[]) as provider:
        with pytest.raises(UpstreamConnectionError):
            [t async for t in provider.create_async_generator("m", HI)]
    received: list[str] = []

    async def consume(provider: DarkAI) -> None:
        async for text in provider.create_async_generator("gpt-4o", HI):
            received.append(text)

    async with DarkAI(api_endpoint=drop.url) as provider:
        with pytest.raises(UpstreamConnectionError):
            await consume(provider)
    assert len(received) == 3


async def test_stall_is_a_timeout(started: list[SimulatorServer]) -> None:
    server = await start(started, format="darkai", failures={"stall": 1.0}, **FAST)
    async with DarkAI(api_endpoint=server.url, timeout=Timeouts(idle=0.2)) as provider:
        with pytest.raises(UpstreamTimeout):
            [t async for t in provider.create_async_generator("gpt-4o", HI)]


def test_bad_profile_values_are_config_errors_naming_the_option() -> None:
    with pytest.raises(ConfigError, match=r"options\.failures\.status"):
        Simulated(name="x", failures={"status": {200: 0.5}})
    with pytest.raises(ConfigError, match="add up to more than 1"):
        Simulated(name="x", failures={"status": {500: 0.8}, "reset": 0.5})
    with pytest.raises(ConfigError, match=r"options\.format"):
        Simulated(name="x", format="smoke-signals")


async def test_simulated_provider_starts_its_server_on_first_use_and_stops_it() -> None:
    provider = Simulated(name="demo", format="openai", words=3, models=["sim-small"], **FAST)
    assert provider.api_endpoint is None
    async with provider:
        text = "".join([t async for t in provider.create_async_generator(None, HI)])
        assert provider.api_endpoint == provider.server.url
    assert text.startswith("[simulated demo]")
    assert provider.server.requests == 1


WEATHER = {
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
    },
}
TOOLS = [
    {"type": "function", "function": {"name": "noop"}},
    {"type": "function", "function": WEATHER},
]


async def test_offered_tools_get_a_call_in_official_chunks(started: list[SimulatorServer]) -> None:
    server = await start(started, format="openai", **FAST)
    choice = {"type": "function", "function": {"name": "get_weather"}}
    owner = SessionOwner()
    body = {"model": "m", "messages": HI, "stream": True, "tools": TOOLS, "tool_choice": choice}
    async with owner.session.post(server.url, json=body) as response:
        payloads = [
            line[6:] for line in (await response.text()).split("\n") if line.startswith("data: ")
        ]
    await owner.aclose()
    chunks = [ChatCompletionChunk.model_validate_json(p) for p in payloads[:-1]]
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert calls[0].id == "call_sim_0"
    assert calls[0].function is not None
    assert calls[0].function.name == "get_weather"
    arguments = "".join(c.function.arguments or "" for c in calls if c.function)
    assert json.loads(arguments) == {"city": "simulated", "days": 1, "unit": "celsius"}
    assert len(calls) > 3  # streamed in fragments, as models do
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_a_simulated_agent_loop_calls_then_answers_in_text() -> None:
    entry = {"name": "sim", "type": "simulated", "models": ["m"], "options": FAST}
    async with Router.from_config({"providers": [entry]}) as router:
        first = await router.complete("m", HI, tools=TOOLS)
        (call,) = first.tool_calls
        assert (call.name, first.content) == ("noop", None)  # the first tool, no choice given
        result = {"role": "tool", "tool_call_id": call.id, "content": "done"}
        second = await router.complete("m", [*HI, first.as_dict(), result], tools=TOOLS)
        refused = await router.complete("m", HI, tools=TOOLS, tool_choice="none")
    assert second.tool_calls == []
    assert (second.content or "").startswith("[simulated sim]")
    assert refused.tool_calls == []


def test_only_openai_format_simulators_take_tools() -> None:
    assert Simulated(name="a", format="openai").supports_tools
    assert not Simulated(name="b", format="darkai").supports_tools
    assert not Simulated(name="c", format="openai", supports_tools=False).supports_tools
