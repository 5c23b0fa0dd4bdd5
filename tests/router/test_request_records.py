"""One record per request, handed to the router's observers when it ends (issue 26,
part 1): its fields after a clean answer, a retry, a relay, a cut, a failure, a
consumer that left, a budget refusal and an embeddings call; and an observer that
breaks never reaches the request."""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from polyroute import (
    AllProvidersFailed,
    BudgetExceededError,
    RequestLabels,
    RequestRecord,
    Router,
    UpstreamConnectionError,
)
from polyroute.router.budget import BudgetPlan
from polyroute.router.state import BudgetLimit
from polyroute.simulator.text import simulated_words
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

pytestmark = pytest.mark.usefixtures("chunk_path")  # decoded, and relayed as it came

HI = [{"role": "user", "content": "Hi"}]
USAGE = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
         "prompt_tokens_details": {"cached_tokens": 3}}  # fmt: skip
PRICE = {"input": 2.0, "output": 8.0}
LABELS = RequestLabels(endpoint="messages", key="ci", team="search")


class Records:
    """An observer keeping what it is told."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def request_ended(self, record: RequestRecord) -> None:
        self.records.append(record)

    @property
    def only(self) -> RequestRecord:
        assert len(self.records) == 1, self.records
        return self.records[0]


def _openai(name: str, server: OpenAIUpstream, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "base_url": server.base_url, "models": ["m"],
            "price": PRICE, **extra}  # fmt: skip


def _router(*entries: dict[str, Any], observer: Records, **settings: Any) -> Router:
    config = {"providers": list(entries), "retry": {"attempts": 2, "backoff_initial": 0},
              **settings}  # fmt: skip
    return Router.from_config(config, observers=[observer])


async def _answer(router: Router, **params: Any) -> str:
    async with router.stream("m", HI, **params) as stream:
        return "".join([text async for text in stream])


async def test_a_clean_answer_gives_one_complete_record(openai_upstream: OpenAIUpstream) -> None:
    openai_upstream.then(Script(usage=USAGE))
    seen = Records()
    async with _router(_openai("up", openai_upstream), observer=seen) as router:
        assert await _answer(router, request_id="req-1", labels=LABELS) == "Hello, world!"
    record = seen.only
    assert (record.id, record.endpoint) == ("req-1", "messages")
    assert (record.key, record.team) == ("ci", "search")
    assert (record.model, record.resolved_model, record.provider) == ("m", "m", "up")
    assert (record.status, record.finish_reason, record.cache) == ("complete", "stop", None)
    assert (record.error_type, record.error, record.content) == (None, None, None)
    usage = record.usage
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (10, 3, 4)
    assert record.cost_status == "exact"
    assert record.cost_usd == pytest.approx((7 * 2.0 + 3 * 2.0 + 4 * 8.0) / 1e6)
    assert record.ttft_ms is not None
    assert 0 < record.ttft_ms <= record.duration_ms
    (attempt,) = record.attempts
    assert (attempt.provider, attempt.model, attempt.outcome) == ("up", "m", "ok")
    assert (attempt.chars, attempt.relay_offset, attempt.error_type) == (13, 0, None)
    assert record.time.tzinfo is not None


async def test_the_record_reads_back_from_its_one_json_shape(
    openai_upstream: OpenAIUpstream,
) -> None:
    seen = Records()
    async with _router(_openai("up", openai_upstream), observer=seen) as router:
        await _answer(router)
    shape = seen.only.as_json()
    assert list(shape) == ["id", "time", "endpoint", "key", "team", "model", "resolved_model",
                           "provider", "status", "finish_reason", "ttft_ms", "duration_ms",
                           "usage", "cost_usd", "cost_status", "cache", "error_type", "error",
                           "attempts", "content"]  # fmt: skip
    assert shape["time"].endswith("Z")
    assert shape["endpoint"] == "chat"  # a library call without labels
    assert list(shape["attempts"][0]) == ["provider", "model", "outcome", "error_type", "error",
                                          "status_code", "started_ms", "ttft_ms", "duration_ms",
                                          "chars", "relay_offset"]  # fmt: skip
    decoded = json.loads(json.dumps(shape))
    assert RequestRecord.from_json(decoded) == seen.only


async def test_a_retry_is_one_complete_record_with_both_attempts(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.then(Script(status=503, error_body='{"error": {"message": "busy"}}'))
    seen = Records()
    async with _router(_openai("up", openai_upstream), observer=seen) as router:
        await _answer(router)
    record = seen.only
    assert record.status == "complete"
    failed, served = record.attempts
    assert (failed.outcome, failed.error_type, failed.status_code) == (
        "failed",
        "UpstreamStatusError",
        503,
    )
    assert failed.error is not None
    assert "503" in failed.error
    assert failed.ttft_ms is None
    assert (served.outcome, served.relay_offset) == ("ok", 0)
    assert served.started_ms >= failed.started_ms + (failed.duration_ms or 0)
    # The request's time to the first chunk counts the failed try; the attempt's does not.
    assert record.ttft_ms is not None
    assert served.ttft_ms is not None
    assert record.ttft_ms >= served.started_ms + served.ttft_ms - 0.01


async def test_a_relay_is_switched_and_each_attempt_says_where_it_took_over() -> None:
    fast = {"first_chunk_ms": 0, "chunk_gap_ms": 0}

    def sim(name: str, **options: Any) -> dict[str, Any]:
        return {"name": name, "type": "simulated", "models": ["m"],
                "options": {"words": 20, "latency": fast, **options}}  # fmt: skip

    drops = {"failures": {"drop_after": {"rate": 1.0, "chunks": 8}}}
    seen = Records()
    router = _router(sim("a", **drops), sim("b"), observer=seen, retry={"attempts": 1})
    async with router, router.stream("m", HI) as stream:
        text = "".join([piece async for piece in stream])
    record = seen.only
    assert record.status == "switched"
    assert record.provider == "b"
    first, second = record.attempts
    assert (first.provider, first.outcome, first.relay_offset) == ("a", "failed", 0)
    assert first.error_type == UpstreamConnectionError.__name__
    assert second.relay_offset == stream.switches[0] == first.chars > 0
    assert first.chars + second.chars == len(text)
    words = simulated_words("a", json.dumps([["user", "Hi"]]), 20)
    assert text == "".join(words)


async def test_a_cut_answer_raised_is_truncated_with_its_error(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.then(Script(reset_after=2))
    seen = Records()
    entry = _openai("up", openai_upstream)
    async with _router(entry, observer=seen, on_midstream_failure="raise") as router:
        with pytest.raises(UpstreamConnectionError):
            await _answer(router)
    record = seen.only
    assert (record.status, record.error_type) == ("truncated", "UpstreamConnectionError")
    assert record.attempts[0].chars == len("Hello, ")
    assert record.cost_status == "estimated"
    assert record.usage.output_tokens == 2  # 7 characters delivered, at 4 a token


async def test_when_every_provider_fails_the_record_is_failed(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.default = Script(status=500)
    seen = Records()
    async with _router(_openai("up", openai_upstream), observer=seen) as router:
        with pytest.raises(AllProvidersFailed):
            await _answer(router)
    record = seen.only
    assert (record.status, record.error_type, record.provider) == (
        "failed",
        "AllProvidersFailed",
        None,
    )
    assert [a.status_code for a in record.attempts] == [500, 500]
    assert (record.cost_usd, record.ttft_ms) == (0.0, None)


async def test_a_consumer_that_leaves_makes_a_cancelled_record(
    openai_upstream: OpenAIUpstream,
) -> None:
    openai_upstream.then(Script(stall_after=1))
    seen = Records()
    async with _router(_openai("up", openai_upstream), observer=seen) as router:
        async with router.stream("m", HI) as stream:
            async for _ in stream:
                break
        never_iterated = router.stream("m", HI)
        await never_iterated.aclose()
    left, closed = seen.records
    assert (left.status, left.error_type) == ("cancelled", None)
    assert left.attempts[0].outcome == "cancelled"
    assert left.attempts[0].chars == len("Hello")
    assert (closed.status, closed.attempts) == ("cancelled", ())
    assert stream.status == never_iterated.status == "cancelled"


async def test_a_budget_refusal_is_a_failed_record_without_attempts(
    openai_upstream: OpenAIUpstream,
) -> None:
    plan = BudgetPlan({"key:ci": BudgetLimit(0.0001, "day")})
    seen = Records()
    async with _router(_openai("up", openai_upstream), observer=seen) as router:
        with pytest.raises(BudgetExceededError):
            await _answer(router, budget=plan, labels=LABELS)
    record = seen.only
    assert (record.status, record.error_type, record.attempts) == (
        "failed",
        "BudgetExceededError",
        (),
    )
    assert record.error is not None
    assert "key:ci" in record.error
    assert record.key == "ci"
    assert openai_upstream.requests == []


async def test_content_is_recorded_only_when_the_labels_allow_it(
    openai_upstream: OpenAIUpstream,
) -> None:
    seen = Records()
    async with _router(_openai("up", openai_upstream), observer=seen) as router:
        await _answer(router, labels=RequestLabels(log_content=True))
        await _answer(router)
    shown, hidden = seen.records
    assert shown.content == {
        "messages": [{"role": "user", "content": "Hi"}],
        "answer": {"role": "assistant", "content": "Hello, world!"},
    }
    assert hidden.content is None


async def test_an_observer_that_raises_never_reaches_the_request(
    openai_upstream: OpenAIUpstream,
) -> None:
    class Broken:
        def request_ended(self, record: RequestRecord) -> None:
            raise RuntimeError("disk full")

    seen = Records()
    router = _router(_openai("up", openai_upstream), observer=seen)
    router.observe(Broken())
    later = Records()
    router.observe(later)
    with capture_logs() as logs:
        async with router:
            assert await _answer(router) == "Hello, world!"
    assert len(seen.records) == len(later.records) == 1
    failed = [log for log in logs if log["event"] == "observer.failed"]
    assert [(log["observer"], log["error"]) for log in failed] == [("Broken", "disk full")]


async def test_a_reloaded_router_tells_the_same_observers(openai_upstream: OpenAIUpstream) -> None:
    seen = Records()
    entry = _openai("up", openai_upstream)
    async with _router(entry, observer=seen) as router:
        reloaded = router.reconfigured({"providers": [{**entry, "priority": 2}]})
        reloaded.take_over()
        await _answer(reloaded)
    assert seen.only.provider == "up"


async def test_an_embeddings_call_is_recorded_answered_or_not(
    openai_upstream: OpenAIUpstream,
) -> None:
    seen = Records()
    entry = _openai("up", openai_upstream, models=["e"])
    async with _router(entry, observer=seen) as router:
        labels = RequestLabels(endpoint="embeddings", key="ci", log_content=True)
        await router.embed("e", ["a b", "c"], request_id="emb-1", labels=labels)
        openai_upstream.default = Script(status=500)
        with pytest.raises(AllProvidersFailed):
            await router.embed("e", "x")
    answered, failed = seen.records
    assert (answered.id, answered.endpoint, answered.status) == ("emb-1", "embeddings", "complete")
    assert (answered.provider, answered.usage.input_tokens) == ("up", 3)
    assert answered.finish_reason is None
    assert answered.content == {"input": ["a b", "c"]}
    assert answered.attempts[0].outcome == "ok"
    assert (failed.endpoint, failed.status, failed.error_type) == (
        "embeddings",
        "failed",
        "AllProvidersFailed",
    )
    assert len(failed.attempts) == 2
