"""Capability flags: an entry that cannot do what a request needs is skipped, with the
reason, as a non-working one is; when none can, the error names what is missing."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from polyroute import CapabilityNotSupportedError, Router
from tests.router.helpers import HI
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.openai import OpenAIUpstream

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
IMAGE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    }
]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


def dark(server: DarkAIUpstream, **extra: Any) -> dict[str, Any]:
    return {"name": "dark", "type": "darkai", "api_endpoint": server.url, "working": True, **extra}


def oa(server: OpenAIUpstream, **extra: Any) -> dict[str, Any]:
    return {
        "name": "oa",
        "type": "openai",
        "base_url": server.base_url,
        "models": ["gpt-4o"],
        **extra,
    }


@pytest.mark.parametrize(
    ("messages", "options", "reason"),
    [
        (HI, {"tools": TOOLS}, "no tool support"),
        (IMAGE, {}, "no support for image, audio or file parts"),
        (HI, {"response_format": SCHEMA}, "no JSON-schema answers"),
    ],
)
async def test_an_entry_without_the_capability_is_skipped_with_the_reason(
    darkai_upstream: DarkAIUpstream,
    openai_upstream: OpenAIUpstream,
    messages: Any,
    options: dict[str, Any],
    reason: str,
) -> None:
    config = {"providers": [dark(darkai_upstream), oa(openai_upstream)]}
    with capture_logs() as logs:
        async with Router.from_config(config) as router:
            stream = router.stream("gpt-4o", messages, **options)
            assert "".join([t async for t in stream]) == "Hello, world!"
    assert stream.provider == "oa"
    assert darkai_upstream.requests == []
    (start,) = [log for log in logs if log["event"] == "route.start"]
    assert start["candidates"] == ["oa"]
    assert stream.attempts[0].provider == "oa"
    sent = openai_upstream.requests[0].body
    assert sent["messages"] == messages
    for key, value in options.items():
        assert sent[key] == value


async def test_when_no_entry_can_the_error_names_the_capability_before_any_request(
    darkai_upstream: DarkAIUpstream,
) -> None:
    async with Router.from_config({"providers": [dark(darkai_upstream)]}) as router:
        with pytest.raises(
            CapabilityNotSupportedError, match="no provider for model 'gpt-4o' supports tool calls"
        ) as caught:
            router.stream("gpt-4o", HI, tools=TOOLS)
    assert caught.value.capabilities == ["tools"]
    assert darkai_upstream.requests == []


async def test_a_tool_conversation_needs_tools_even_without_a_tools_list(
    darkai_upstream: DarkAIUpstream,
) -> None:
    conversation = [
        *HI,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "42"},
    ]
    async with Router.from_config({"providers": [dark(darkai_upstream)]}) as router:
        with pytest.raises(CapabilityNotSupportedError, match="tool calls"):
            router.stream("gpt-4o", conversation)


async def test_entries_override_the_class_flags(
    darkai_upstream: DarkAIUpstream, openai_upstream: OpenAIUpstream
) -> None:
    config = {"providers": [oa(openai_upstream, supports_tools=False)]}
    async with Router.from_config(config) as router:
        with pytest.raises(CapabilityNotSupportedError):
            router.stream("gpt-4o", HI, tools=TOOLS)
        assert router.providers[0].supports_vision is True


async def test_a_provider_called_directly_refuses_what_it_cannot_do() -> None:
    from polyroute.providers import DarkAI

    async with DarkAI(api_endpoint="http://127.0.0.1:9/chat") as provider:
        with pytest.raises(
            CapabilityNotSupportedError, match="provider 'darkai' does not support image"
        ):
            async for _ in provider.stream("gpt-4o", IMAGE):
                pass
