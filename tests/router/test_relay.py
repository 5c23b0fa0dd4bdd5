"""Mid-stream continuation through simulated upstreams, where every answer is known to
the character: the simulators' words depend only on the conversation, and one can
continue exactly where another stopped (optionally repeating words at the seam)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from polyroute import (
    Router,
    StreamRestarted,
    UpstreamConnectionError,
    Usage,
)
from polyroute.providers import Registry, default_registry
from polyroute.providers.simulated import Simulated
from polyroute.simulator.text import simulated_words

pytestmark = pytest.mark.usefixtures("chunk_path")  # decoded, and relayed as it came

HI = [{"role": "user", "content": "Tell me about Alice"}]
WORDS = 20
FAST = {"first_chunk_ms": 0, "chunk_gap_ms": 0}


def expected(first_provider: str) -> str:
    conversation = json.dumps([[m["role"], m["content"]] for m in HI])
    return "".join(simulated_words(first_provider, conversation, WORDS))


def sim(name: str, wire: str = "darkai", **options: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "simulated",
        "models": ["m"],
        "options": {"format": wire, "words": WORDS, "latency": FAST, **options},
    }


def drops_after(chunks: int) -> dict[str, Any]:
    return {"failures": {"drop_after": {"rate": 1.0, "chunks": chunks}}}


async def run(
    config: dict[str, Any], registry: Registry | None = None
) -> tuple[list[str], Any, list[Any]]:
    with capture_logs() as logs:
        async with Router.from_config(
            {"retry": {"attempts": 1}, **config}, registry=registry
        ) as router:
            stream = router.stream("m", HI)
            received = [text async for text in stream]
    return received, stream, logs


@pytest.mark.parametrize(
    ("first", "second"), [("darkai", "openai"), ("openai", "darkai"), ("openai", "openai")]
)
@pytest.mark.parametrize("overlap", [0, 3])
async def test_drop_at_40_percent_is_completed_without_a_duplicated_seam(
    first: str, second: str, overlap: int
) -> None:
    config = {
        "providers": [
            sim("a", first, **drops_after(8)),  # the tag and 7 of 20 words: 40% of the chunks
            sim("b", second, continuation_overlap=overlap),
        ]
    }
    received, stream, logs = await run(config)
    assert "".join(received) == expected("a")
    assert stream.text == expected("a")
    assert stream.status == "switched"
    offset = len("".join(simulated_words("a", json.dumps([["user", HI[0]["content"]]]), WORDS)[:8]))
    assert stream.switches == [offset]
    assert [(a.provider, a.outcome) for a in stream.attempts] == [("a", "failed"), ("b", "ok")]
    assert isinstance(stream.attempts[0].error, UpstreamConnectionError)
    relay = next(log for log in logs if log["event"] == "route.relay")
    assert (relay["from_provider"], relay["to_provider"], relay["mode"]) == ("a", "b", "continue")
    assert relay["chars"] == offset
    assert relay["gap_ms"] >= 0
    assert logs[-1]["event"] == "route.done"
    assert logs[-1]["relays"] == 1


async def test_relays_are_bounded_by_max_relays() -> None:
    providers = [sim("a", **drops_after(4)), sim("b", **drops_after(5)), sim("c")]
    received, stream, _ = await run({"providers": providers, "max_relays": 2})
    assert "".join(received) == expected("a")
    assert len(stream.switches) == 2
    assert stream.status == "switched"

    with pytest.raises(UpstreamConnectionError):
        await run({"providers": providers, "max_relays": 1})


async def test_max_relays_one_leaves_a_truthful_truncated_stream() -> None:
    providers = [sim("a", **drops_after(4)), sim("b", **drops_after(5)), sim("c")]
    async with Router.from_config(
        {"providers": providers, "max_relays": 1, "retry": {"attempts": 1}}
    ) as router:
        stream = router.stream("m", HI)
        with pytest.raises(UpstreamConnectionError):
            [text async for text in stream]
    assert stream.status == "truncated"
    assert len(stream.switches) == 1
    assert stream.text
    assert expected("a").startswith(stream.text)
    assert [a.provider for a in stream.attempts] == ["a", "b"]


class CannotContinue(Simulated):
    type_name = "simulated-plain"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_continuation = False


def plain_registry() -> Registry:
    registry = Registry({name: default_registry().get(name) for name in default_registry().names()})
    registry.add("plain", CannotContinue)
    return registry


async def test_no_target_that_can_continue_raises_by_default_and_never_splices() -> None:
    plain = {**sim("b"), "type": "plain"}
    config = {"providers": [sim("a", **drops_after(6)), plain], "retry": {"attempts": 1}}
    with capture_logs() as logs:
        async with Router.from_config(config, registry=plain_registry()) as router:
            stream = router.stream("m", HI)
            with pytest.raises(UpstreamConnectionError):
                [text async for text in stream]
    assert stream.status == "truncated"
    assert [a.provider for a in stream.attempts] == ["a"]
    failed = logs[-1]
    assert (failed["event"], failed["error_type"]) == ("route.failed", "UpstreamConnectionError")
    assert not any(log["event"] == "route.relay" for log in logs)


async def test_no_target_that_can_continue_restarts_when_configured() -> None:
    plain = {**sim("b"), "type": "plain"}
    config = {"providers": [sim("a", **drops_after(6)), plain], "continuation_fallback": "restart"}
    received, stream, logs = await run(config, registry=plain_registry())
    markers = [text for text in received if isinstance(text, StreamRestarted)]
    assert len(markers) == 1
    marker_at = received.index(markers[0])
    assert "".join(received[:marker_at]) == "".join(expected("a"))[: markers[0].discarded]
    assert "".join(received[marker_at + 1 :]) == expected("b")  # the new, whole answer
    assert stream.status == "restarted"
    relay = next(log for log in logs if log["event"] == "route.relay")
    assert relay["mode"] == "restart"


async def test_restart_mode_yields_the_marker_then_a_whole_answer() -> None:
    config = {
        "providers": [sim("a", **drops_after(3)), sim("b")],
        "on_midstream_failure": "restart",
    }
    received, stream, _ = await run(config)
    (marker,) = [text for text in received if isinstance(text, StreamRestarted)]
    assert marker.provider == "b"
    assert "".join(received).endswith(expected("b"))
    assert stream.status == "restarted"


async def test_per_model_setting_turns_relays_off_for_one_model() -> None:
    config = {
        "providers": [sim("a", **drops_after(3)), sim("b")],
        "per_model": {"m": {"on_midstream_failure": "raise"}},
    }
    with pytest.raises(UpstreamConnectionError):
        await run(config)


async def test_usage_is_summed_over_attempts() -> None:
    async with Router.from_config(
        {"providers": [sim("a", "openai"), sim("b", "openai")]}
    ) as router:
        stream = router.stream("m", HI)
        text = "".join([t async for t in stream])
        assert stream.usage == Usage(0, WORDS + 1, WORDS + 1)
        first = stream.attempts[0]
        first.usage = Usage(2, 3, 5, {"completion_tokens_details": {"reasoning_tokens": 1}})
        stream.attempts.append(type(first)("b", "m"))
        stream.attempts[-1].usage = Usage(
            1, 1, 2, {"completion_tokens_details": {"reasoning_tokens": 2}}
        )
    assert text == expected("a")
    assert stream.usage == Usage(3, 4, 7, {"completion_tokens_details": {"reasoning_tokens": 3}})


@pytest.mark.parametrize(
    "config",
    [
        {"providers": [sim("a")]},
        {"providers": [sim("a", **drops_after(6)), sim("b", "openai")]},
        {"providers": [sim("a", **drops_after(3)), sim("b")], "on_midstream_failure": "restart"},
    ],
    ids=["whole", "relayed", "restarted"],
)
async def test_delta_batches_hold_the_same_deltas_in_order(config: dict[str, Any]) -> None:
    async def both() -> tuple[list[Any], list[list[Any]]]:
        async with Router.from_config({"retry": {"attempts": 1}, **config}) as router:
            async with router.stream("m", HI) as one:
                deltas = [delta async for delta in one.deltas()]
            async with router.stream("m", HI) as other:
                batches = [batch async for batch in other.delta_batches()]
        assert one.status == other.status
        assert one.text == other.text
        return deltas, batches

    deltas, batches = await both()
    assert [delta for batch in batches for delta in batch] == deltas
    assert all(batches)
