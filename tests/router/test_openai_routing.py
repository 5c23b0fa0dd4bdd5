"""The router over OpenAI-format upstreams (and mixed with DarkAI)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from polyroute import (
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotSupportedError,
    Router,
    Usage,
)
from tests.router.helpers import HI, FakeSleep
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.usefixtures("chunk_path")  # decoded, and relayed as it came


@pytest.fixture
async def second_openai() -> AsyncIterator[OpenAIUpstream]:
    server = await OpenAIUpstream(models=["local-small"]).start()
    yield server
    await server.stop()


def openai_entry(name: str, server: OpenAIUpstream, **extra: object) -> dict[str, object]:
    return {"name": name, "type": "openai", "base_url": server.base_url, **extra}


async def test_finish_reason_and_usage_are_on_the_stream(openai_upstream: OpenAIUpstream) -> None:
    async with Router.from_config({"providers": [openai_entry("oa", openai_upstream)]}) as router:
        stream = router.stream("local-large", HI, temperature=0)
        assert "".join([t async for t in stream]) == "Hello, world!"
    assert stream.finish_reason == "stop"
    assert stream.usage == Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    assert openai_upstream.requests[0].body["temperature"] == 0


async def test_context_length_falls_back_without_retry_or_cooldown(
    openai_upstream: OpenAIUpstream, second_openai: OpenAIUpstream
) -> None:
    openai_upstream.default = Script(
        status=400,
        error_body='{"error": {"message": "too long", "code": "context_length_exceeded"}}',
    )
    config = {
        "providers": [
            openai_entry("small-ctx", openai_upstream, models=["local-large"]),
            openai_entry("big-ctx", second_openai, models=["local-small"]),
        ],
        "fallbacks": {"local-large": ["local-small"]},
        "cooldown": {"failures": 1},
    }
    async with Router.from_config(config, sleep=FakeSleep()) as router:
        stream = router.stream("local-large", HI)
        assert "".join([t async for t in stream]) == "Hello, world!"
        assert router.health.state("small-ctx") == "closed"
    assert isinstance(stream.attempts[0].error, ContextLengthExceededError)
    assert len(openai_upstream.requests) == 1
    assert stream.provider == "big-ctx"


async def test_model_unknown_upstream_moves_on_and_does_not_cool_down(
    openai_upstream: OpenAIUpstream, second_openai: OpenAIUpstream
) -> None:
    openai_upstream.default = Script(
        status=404, error_body='{"error": {"message": "no such model", "code": "model_not_found"}}'
    )
    config = {
        "providers": [openai_entry("a", openai_upstream), openai_entry("b", second_openai)],
        "cooldown": {"failures": 1},
    }
    async with Router.from_config(config) as router:
        text = await router.complete_text("local-large", HI)
        assert router.health.state("a") == "closed"
    assert text == "Hello, world!"


async def test_unknown_parameter_reaches_the_caller_at_once(
    openai_upstream: OpenAIUpstream, second_openai: OpenAIUpstream
) -> None:
    config = {"providers": [openai_entry("a", openai_upstream), openai_entry("b", second_openai)]}
    async with Router.from_config(config) as router:
        with pytest.raises(InvalidRequestError, match="temprature"):
            await router.complete_text("local-large", HI, temprature=1)
    assert openai_upstream.requests == []
    assert second_openai.requests == []


async def test_discovered_models_route_requests(
    openai_upstream: OpenAIUpstream, second_openai: OpenAIUpstream
) -> None:
    config = {
        "providers": [
            openai_entry("a", openai_upstream, models="discover"),
            openai_entry("b", second_openai, models="discover"),
        ]
    }
    with capture_logs() as logs:
        async with Router.from_config(config) as router:
            stream = router.stream("local-small", HI)
            await stream.__anext__()
            await stream.aclose()
            with pytest.raises(ModelNotSupportedError):
                router.stream("gpt-4o", HI)
    assert stream.attempts[0].provider == "a"
    assert [log["provider"] for log in logs if log["event"] == "provider.models_discovered"] == [
        "a",
        "b",
    ]


async def test_failed_discovery_is_logged_and_the_router_starts(
    openai_upstream: OpenAIUpstream,
) -> None:
    url = openai_upstream.base_url
    await openai_upstream.stop()
    config = {
        "providers": [{"name": "gone", "type": "openai", "base_url": url, "models": "discover"}]
    }
    with capture_logs() as logs:
        async with Router.from_config(config):
            pass
    failed = next(log for log in logs if log["event"] == "provider.discovery_failed")
    assert failed["error_type"] == "UpstreamConnectionError"


async def test_a_discovery_error_names_its_url_once(openai_upstream: OpenAIUpstream) -> None:
    url = openai_upstream.base_url
    await openai_upstream.stop()
    entry = {"name": "gone", "type": "openai", "base_url": url, "models": "discover"}
    async with Router.from_config({"providers": [entry]}) as router:
        reason = router.discovery_errors["gone"]
    assert reason.count("127.0.0.1") == 1, reason


async def test_darkai_and_openai_entries_fall_back_to_each_other(
    openai_upstream: OpenAIUpstream, darkai_upstream: DarkAIUpstream
) -> None:
    openai_upstream.default = Script(status=503)
    config = {
        "providers": [
            openai_entry("oa", openai_upstream, models=["gpt-4o"]),
            {
                "name": "dark",
                "type": "darkai",
                "api_endpoint": darkai_upstream.url,
                "working": True,
            },
        ],
        "retry": {"attempts": 1},
    }
    async with Router.from_config(config) as router:
        stream = router.stream("gpt-4o", HI)
        assert "".join([t async for t in stream]) == "Hello, world!"
    assert [(a.provider, a.outcome) for a in stream.attempts] == [("oa", "failed"), ("dark", "ok")]
    assert stream.usage is None


async def test_an_unknown_model_400_from_one_server_moves_on_to_the_next(
    openai_upstream: OpenAIUpstream, second_openai: OpenAIUpstream
) -> None:
    litellm_style = (
        '{"error": {"message": "Invalid model name passed in model=local-large", '
        '"type": "invalid_request_error", "param": "model", "code": "400"}}'
    )
    openai_upstream.default = Script(status=400, error_body=litellm_style)
    config = {"providers": [openai_entry("a", openai_upstream), openai_entry("b", second_openai)]}
    async with Router.from_config(config) as router:
        stream = router.stream("local-large", HI)
        assert "".join([t async for t in stream]) == "Hello, world!"
    assert isinstance(stream.attempts[0].error, ModelNotSupportedError)
    assert stream.provider == "b"


async def test_the_model_is_resolved_once_through_entry_aliases(
    openai_upstream: OpenAIUpstream,
) -> None:
    entry = openai_entry(
        "a", openai_upstream, models=["fast"], model_aliases={"fast": "gpt-4o-mini"}
    )
    async with Router.from_config({"providers": [entry], "aliases": {"quick": "fast"}}) as router:
        assert await router.complete_text("quick", HI) == "Hello, world!"
    assert openai_upstream.requests[0].body["model"] == "gpt-4o-mini"


async def test_delta_batches_are_one_list_per_upstream_read(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.default = Script(chunks=["a"] * 30)  # written in one go: few reads
    config = {"providers": [openai_entry("oa", openai_upstream)]}
    async with Router.from_config(config) as router, router.stream("local-large", HI) as stream:
        batches = [batch async for batch in stream.delta_batches()]
    assert stream.text == "a" * 30
    assert all(batches)
    assert len(batches) < 10 < sum(map(len, batches))
