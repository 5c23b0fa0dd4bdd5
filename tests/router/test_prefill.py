"""Continuation by prefill or by instruction, per entry and per model, and a model's
refusal of prefill learned from its upstream's 400 (as the real Anthropic API answers
Claude Sonnet/Opus 4.6 and later) and kept in the routing state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from polyroute import PrefillRefusedError, Router
from polyroute.core.errors import UpstreamStatusError
from polyroute.core.messages import CONTINUE_INSTRUCTION
from polyroute.providers import Anthropic
from tests.router.helpers import FakeSleep
from tests.upstreams.anthropic import NO_PREFILL, AnthropicUpstream, anthropic_error
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.usefixtures("chunk_path")  # decoded, and relayed as it came

HI = [{"role": "user", "content": "Why is the sky blue?"}]
CUT = Script(chunks=["The sky ", "is "], reset_after=2)


def oa(name: str, server: OpenAIUpstream, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "base_url": server.base_url, "models": ["m"], **extra}


def claude(name: str, server: AnthropicUpstream, **extra: Any) -> dict[str, Any]:
    entry = {"name": name, "type": "anthropic", "base_url": server.base_url, "models": ["m"]}
    return {**entry, **extra}


@pytest.fixture
async def second_openai() -> AsyncIterator[OpenAIUpstream]:
    server = await OpenAIUpstream().start()
    yield server
    await server.stop()


async def relay(config: dict[str, Any]) -> tuple[str, Any, list[dict[str, Any]]]:
    """One request through a router of ``config``: its text, stream and events."""
    with capture_logs() as logs:
        async with (
            Router.from_config({"retry": {"attempts": 1}, **config}, sleep=FakeSleep()) as router,
            router.stream("m", HI) as stream,
        ):
            text = "".join([piece async for piece in stream])
    return text, stream, logs


def event(logs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [log for log in logs if log["event"] == name]
    return found


def last_turns(server: AnthropicUpstream | OpenAIUpstream, index: int = -1) -> list[Any]:
    messages = server.requests[index].body["messages"]
    return [(m["role"], m["content"]) for m in messages[1:]]


async def test_a_refused_prefill_is_asked_again_at_once_by_instruction(
    openai_upstream: OpenAIUpstream, anthropic_upstream: AnthropicUpstream
) -> None:
    openai_upstream.default = CUT
    anthropic_upstream.default = Script(chunks=["blue."])
    anthropic_upstream.refuses_prefill = True
    config = {"providers": [oa("first", openai_upstream), claude("claude", anthropic_upstream)]}
    text, stream, logs = await relay(config)

    assert text == stream.text == "The sky is blue."  # nothing lost, nothing doubled
    assert stream.status == "switched"
    assert [(a.provider, a.outcome) for a in stream.attempts] == [
        ("first", "failed"),
        ("claude", "ok"),  # the refusal is no attempt of its own: it cost nothing
    ]
    refused, asked = anthropic_upstream.requests
    prefill = [{"type": "text", "text": "The sky is"}]
    assert last_turns(anthropic_upstream, 0) == [("assistant", prefill)]
    assert refused.body["messages"][-1]["role"] == "assistant"
    instruction = [{"type": "text", "text": CONTINUE_INSTRUCTION}]
    assert last_turns(anthropic_upstream, 1) == [("assistant", prefill), ("user", instruction)]
    assert anthropic_upstream.prefills_refused == 1
    assert event(logs, "route.relay")["continuation"] == "instruction"
    learned = event(logs, "route.prefill_refused")
    assert (learned["provider"], learned["model"]) == ("claude", "m")
    assert asked.completed


async def test_every_later_continuation_to_that_model_goes_by_instruction(
    openai_upstream: OpenAIUpstream, anthropic_upstream: AnthropicUpstream
) -> None:
    openai_upstream.default = CUT
    anthropic_upstream.default = Script(chunks=["blue."])
    anthropic_upstream.refuses_prefill = True
    config = {
        "providers": [oa("first", openai_upstream), claude("claude", anthropic_upstream)],
        "retry": {"attempts": 1},
    }
    async with Router.from_config(config, sleep=FakeSleep()) as router:
        for _ in range(3):
            assert await router.complete_text("m", HI) == "The sky is blue."
    assert anthropic_upstream.prefills_refused == 1
    assert len(anthropic_upstream.requests) == 4  # one refusal, then three instructions


async def test_the_refusal_is_learned_once_for_every_process_on_one_redis(
    openai_upstream: OpenAIUpstream, anthropic_upstream: AnthropicUpstream, redis_url: str
) -> None:
    openai_upstream.default = CUT
    anthropic_upstream.default = Script(chunks=["blue."])
    anthropic_upstream.refuses_prefill = True
    config = {
        "providers": [oa("first", openai_upstream), claude("claude", anthropic_upstream)],
        "retry": {"attempts": 1},
        "state": {"backend": "redis", "url": redis_url},
    }
    async with (
        Router.from_config(config, sleep=FakeSleep()) as one,
        Router.from_config(config, sleep=FakeSleep()) as other,
    ):
        assert await one.complete_text("m", HI) == "The sky is blue."
        with capture_logs() as logs:
            assert await other.complete_text("m", HI) == "The sky is blue."
    assert anthropic_upstream.prefills_refused == 1  # the other process never tried prefill
    assert event(logs, "route.relay")["continuation"] == "instruction"
    assert not [log for log in logs if log["event"] == "route.prefill_refused"]


async def test_a_model_that_takes_prefill_is_continued_by_prefill(
    openai_upstream: OpenAIUpstream, anthropic_upstream: AnthropicUpstream
) -> None:
    openai_upstream.default = CUT
    anthropic_upstream.default = Script(chunks=[" blue."])  # the space the prefill left out
    config = {"providers": [oa("first", openai_upstream), claude("claude", anthropic_upstream)]}
    text, _, logs = await relay(config)
    assert text == "The sky is blue."
    (asked,) = anthropic_upstream.requests
    assert asked.body["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "The sky is"}],
    }
    assert event(logs, "route.relay")["continuation"] == "prefill"


@pytest.mark.parametrize("where", ["entry", "per_model", "per_model_pattern", "top_level"])
async def test_prefill_false_continues_by_instruction(
    openai_upstream: OpenAIUpstream, anthropic_upstream: AnthropicUpstream, where: str
) -> None:
    openai_upstream.default = CUT
    anthropic_upstream.default = Script(chunks=["blue."])
    off: dict[str, Any] = {"supports_prefill": False}
    settings: dict[str, Any] = {
        "entry": {},
        "per_model": {"per_model": {"m": off}},
        "per_model_pattern": {"per_model": {"[lm]": off, "x*": {"supports_prefill": True}}},
        "top_level": off,
    }[where]
    entry = claude("claude", anthropic_upstream, **(off if where == "entry" else {}))
    text, _, logs = await relay({"providers": [oa("first", openai_upstream), entry], **settings})
    assert text == "The sky is blue."
    assert last_turns(anthropic_upstream)[-1] == (
        "user",
        [{"type": "text", "text": CONTINUE_INSTRUCTION}],
    )
    assert event(logs, "route.relay")["continuation"] == "instruction"


async def test_an_openai_entry_prefills_only_when_its_entry_says_so(
    openai_upstream: OpenAIUpstream, second_openai: OpenAIUpstream
) -> None:
    openai_upstream.default = CUT
    second_openai.default = Script(chunks=["blue."])
    entries = [oa("first", openai_upstream), oa("second", second_openai)]
    text, _, logs = await relay({"providers": entries})
    assert text == "The sky is blue."
    assert last_turns(second_openai)[-2:] == [
        ("assistant", "The sky is "),
        ("user", CONTINUE_INSTRUCTION),
    ]
    assert event(logs, "route.relay")["continuation"] == "instruction"

    entries[1]["supports_prefill"] = True
    text, _, logs = await relay({"providers": entries})
    assert text == "The sky is blue."
    assert last_turns(second_openai)[-1] == ("assistant", "The sky is ")
    assert event(logs, "route.relay")["continuation"] == "prefill"


async def test_a_refusal_under_prefill_true_is_asked_again_by_instruction_too(
    openai_upstream: OpenAIUpstream, anthropic_upstream: AnthropicUpstream
) -> None:
    """``true`` always tries prefill, and still loses no text when the model refuses."""
    openai_upstream.default = CUT
    anthropic_upstream.default = Script(chunks=["blue."])
    anthropic_upstream.refuses_prefill = True
    entry = claude("claude", anthropic_upstream, supports_prefill=True)
    config = {"providers": [oa("first", openai_upstream), entry], "retry": {"attempts": 1}}
    async with Router.from_config(config, sleep=FakeSleep()) as router:
        assert await router.complete_text("m", HI) == "The sky is blue."
        assert await router.complete_text("m", HI) == "The sky is blue."
    assert anthropic_upstream.prefills_refused == 2  # true: tried every time


def test_the_apis_refusal_is_read_as_a_prefill_refusal() -> None:
    provider = Anthropic(name="claude", api_key="sk-ant-test-0123456789")
    answer = UpstreamStatusError(
        400, body=anthropic_error("invalid_request_error", NO_PREFILL, "req_011Cx")
    )
    refused = provider.classify_status_error(answer, "claude-opus-4-6")
    assert isinstance(refused, PrefillRefusedError)
    assert (refused.status, refused.retryable, refused.provider) == (400, False, "claude")
    other = UpstreamStatusError(400, body=anthropic_error("invalid_request_error", "bad field"))
    assert not isinstance(provider.classify_status_error(other, "m"), PrefillRefusedError)
