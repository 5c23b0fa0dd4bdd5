"""Answers with reasoning, cut: before any text (restarted, the reasoning shown taken
back) and after text (continued by instruction, the new provider's reasoning passed
on), per wire format, against local servers that speak each one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from polyroute import (
    NativeRequest,
    ReasoningDelta,
    RestartDelta,
    Router,
    StreamRestarted,
    TextDelta,
)
from polyroute.core.messages import CONTINUE_INSTRUCTION
from tests.router.helpers import FakeSleep
from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.gemini import GeminiUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Chunk, Script, ScriptedUpstream

pytestmark = pytest.mark.usefixtures("chunk_path")  # decoded, and relayed as it came

HI = [{"role": "user", "content": "Why is the sky blue?"}]
FORMATS = ["anthropic", "openai", "gemini"]
SERVERS: dict[str, type[AnthropicUpstream | OpenAIUpstream | GeminiUpstream]] = {
    "anthropic": AnthropicUpstream,
    "openai": OpenAIUpstream,
    "gemini": GeminiUpstream,
}
Start = Callable[[str], Awaitable[Any]]


def thinking(kind: str, text: str) -> Chunk:
    """A piece of reasoning in ``kind``'s wire format (the test servers' chunks)."""
    if kind == "anthropic":
        return {"thinking": text, "signature": f"sig-{len(text)}"}
    if kind == "openai":
        return {"reasoning_content": text}
    return {"thought": text}


def entry(name: str, kind: str, server: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": kind, "base_url": server.base_url, "models": ["m"], **extra}


def last_message(kind: str, server: ScriptedUpstream) -> tuple[str, str]:
    """The role and text of the last turn of the last request ``server`` was sent."""
    body = server.requests[-1].body
    turns = body["contents"] if kind == "gemini" else body["messages"]
    last = turns[-1]
    content = last.get("parts") or last.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content)
    return last["role"], content


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[Any] = []

    async def start_one(kind: str) -> Any:
        server = await SERVERS[kind]().start()
        servers.append(server)
        return server

    yield start_one
    for server in servers:
        await server.stop()


async def routed(
    providers: list[dict[str, Any]], messages: Any = HI, **params: Any
) -> tuple[list[Any], Any, list[dict[str, Any]]]:
    config = {"providers": providers, "retry": {"attempts": 1}}
    with capture_logs() as logs:
        async with (
            Router.from_config(config, sleep=FakeSleep()) as router,
            router.stream("m", messages, **params) as stream,
        ):
            deltas = [delta async for delta in stream.deltas()]
    return deltas, stream, logs


@pytest.mark.parametrize("kind", FORMATS)
async def test_an_answer_cut_while_reasoning_restarts_and_keeps_only_the_new_reasoning(
    start: Start, kind: str
) -> None:
    first, second = await start(kind), await start(kind)
    first.default = Script(chunks=[thinking(kind, "Let me think")], reset_after=1)
    second.default = Script(chunks=[thinking(kind, "Rayleigh."), "Blue light scatters."])
    providers = [entry("first", kind, first), entry("second", kind, second)]
    deltas, stream, logs = await routed(providers)

    shown = [d for d in deltas if isinstance(d, ReasoningDelta | RestartDelta | TextDelta)]
    assert shown == [
        ReasoningDelta("Let me think"),
        RestartDelta(discarded=0, provider="second"),  # take back the reasoning shown
        ReasoningDelta("Rayleigh."),
        TextDelta("Blue light scatters."),
    ]
    # The assembled answer holds the second attempt's reasoning only.
    assert stream.message.reasoning == "Rayleigh."
    assert stream.message.content == "Blue light scatters."
    assert stream.status == "restarted"
    assert stream.switches == []  # no text was handed over
    assert [(a.provider, a.outcome) for a in stream.attempts] == [
        ("first", "failed"),
        ("second", "ok"),
    ]
    relay = next(log for log in logs if log["event"] == "route.relay")
    assert (relay["mode"], relay["cut"], relay["chars"]) == ("restart", "reasoning", 0)
    assert "continuation" not in relay
    # Restarted: the second upstream was asked the question, not to continue anything.
    assert last_message(kind, second) == ("user", HI[0]["content"])


async def test_text_iteration_sees_the_restart_after_reasoning_as_an_empty_marker(
    start: Start,
) -> None:
    first, second = await start("openai"), await start("openai")
    first.default = Script(chunks=[thinking("openai", "Hmm")], reset_after=1)
    second.default = Script(chunks=["Blue."])
    config = {"providers": [entry("a", "openai", first), entry("b", "openai", second)]}
    async with Router.from_config({**config, "retry": {"attempts": 1}}) as router:
        pieces = [piece async for piece in router.stream("m", HI)]
    (marker,) = [piece for piece in pieces if isinstance(piece, StreamRestarted)]
    assert (marker.discarded, marker.provider) == (0, "b")
    assert "".join(pieces) == "Blue."


@pytest.mark.parametrize(
    ("first_kind", "second_kind"),
    [
        ("anthropic", "anthropic"),
        ("openai", "openai"),
        ("gemini", "gemini"),
        ("openai", "anthropic"),
        ("anthropic", "openai"),
        ("gemini", "anthropic"),
    ],
)
async def test_an_answer_cut_after_text_with_reasoning_is_continued_by_instruction(
    start: Start, first_kind: str, second_kind: str
) -> None:
    first, second = await start(first_kind), await start(second_kind)
    first.default = Script(chunks=[thinking(first_kind, "Hmm."), "The sky ", "is "], reset_after=3)
    # The continuing model reasons first, then repeats a few words at the seam.
    second.default = Script(chunks=[thinking(second_kind, "Go on."), "sky is ", "blue."])
    # An entry that would prefill (openai with supports_prefill, anthropic's auto) is
    # still told to continue: prefill and reasoning do not go together.
    extra = {"supports_prefill": True} if second_kind == "openai" else {}
    providers = [entry("first", first_kind, first), entry("second", second_kind, second, **extra)]
    deltas, stream, logs = await routed(providers)

    assert stream.text == "The sky is blue."  # the repeat dropped, nothing doubled
    assert stream.status == "switched"
    assert stream.switches == [len("The sky is ")]
    assert last_message(second_kind, second) == ("user", CONTINUE_INSTRUCTION)
    relay = next(log for log in logs if log["event"] == "route.relay")
    assert (relay["mode"], relay["continuation"]) == ("continue", "instruction")
    # The new provider's reasoning is passed on as it comes, before its text.
    after = deltas[[type(d) for d in deltas].index(TextDelta) + 2 :]
    assert [d for d in after if isinstance(d, ReasoningDelta | TextDelta)] == [
        ReasoningDelta("Go on."),
        TextDelta("blue."),
    ]
    assert stream.message.reasoning == "Hmm.Go on."


async def test_a_native_request_with_thinking_is_continued_by_instruction_thinking_kept(
    start: Start,
) -> None:
    first, second = await start("anthropic"), await start("anthropic")
    first.default = Script(chunks=["The sky ", "is "], reset_after=2)
    second.default = Script(chunks=[thinking("anthropic", "Continue."), "blue."])
    thinking_on = {"type": "enabled", "budget_tokens": 1024}
    body = {"model": "m", "max_tokens": 2048, "messages": HI, "thinking": thinking_on}
    providers = [entry("first", "anthropic", first), entry("second", "anthropic", second)]
    _, stream, logs = await routed(
        providers, native=NativeRequest("anthropic", body), max_tokens=2048
    )
    assert stream.text == "The sky is blue."
    sent = second.requests[-1].body
    assert sent["thinking"] == thinking_on  # by instruction, thinking stays as asked
    assert sent["messages"][-2:] == [
        {"role": "assistant", "content": [{"type": "text", "text": "The sky is"}]},
        {"role": "user", "content": CONTINUE_INSTRUCTION},
    ]
    relay = next(log for log in logs if log["event"] == "route.relay")
    assert relay["continuation"] == "instruction"
    assert json.dumps(sent).count("The sky is") == 1
