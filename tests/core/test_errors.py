"""The messages of polyroute's errors: what failed, where, and how often, in words."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ValidationError, field_validator

from polyroute import (
    AllProvidersFailed,
    Attempt,
    ProviderNotFoundError,
    RateLimitedError,
    UpstreamConnectionError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from polyroute.core.console import HumanRenderer
from polyroute.core.errors import describe_validation_error
from polyroute.core.http import status_error

URL = "http://127.0.0.1:8081/v1/chat/completions"


def failed(provider: str, error: BaseException | None, model: str = "m") -> Attempt:
    outcome = "failed" if error is not None else "hedge_lost"
    return Attempt(provider=provider, model=model, outcome=outcome, error=error)


def busy(provider: str = "always503") -> UpstreamStatusError:
    return UpstreamStatusError(503, provider=provider, url=URL)


def test_a_status_error_names_the_status_and_the_url_that_answered() -> None:
    assert str(busy()) == f"always503: HTTP 503 from {URL}"
    with_body = UpstreamStatusError(500, provider="p", body="oops", url=URL)
    assert str(with_body) == f"p: HTTP 500 from {URL}: oops"
    assert str(UpstreamStatusError(500, provider="p")) == "p: HTTP 500"


def test_the_url_is_shown_without_its_query_or_credentials() -> None:
    url = "https://user:secret@example.invalid/v1beta/models/g:streamGenerateContent?key=k1"
    error = status_error(429, provider="g", body="slow", url=url)
    assert isinstance(error, RateLimitedError)
    assert error.url == "https://***@example.invalid/v1beta/models/g:streamGenerateContent"
    assert "secret" not in str(error)
    assert "k1" not in str(error)


def test_a_refined_error_is_given_the_url_of_the_answer_it_came_from() -> None:
    refined = RateLimitedError(429, provider="oa", body="quota", retry_after=2.0)
    refined.locate(URL)
    assert (refined.url, refined.retry_after) == (URL, 2.0)
    assert str(refined) == f"oa: HTTP 429 from {URL}: quota"


def test_all_providers_failed_names_each_entry_once_with_its_attempts() -> None:
    refused = UpstreamConnectionError(
        "cannot connect to http://127.0.0.1:9/chat: connection refused", provider="dead"
    )
    error = AllProvidersFailed(
        "m",
        [failed("always503", busy()), failed("always503", busy()), failed("dead", refused)],
        ["keyless (m): no key: KEY is not set"],
    )
    assert str(error) == (
        "all providers failed for model 'm'\n"
        f"  - always503 (m, 2 attempts): HTTP 503 from {URL}\n"
        "  - dead (m): cannot connect to http://127.0.0.1:9/chat: connection refused\n"
        "  - keyless (m): no key: KEY is not set"
    )
    assert error.by_entry() == [
        f"always503 (2 attempts): HTTP 503 from {URL}",
        "dead: cannot connect to http://127.0.0.1:9/chat: connection refused",
    ]
    assert "1 attempts" not in str(error)


def test_an_entry_that_failed_in_different_ways_says_each_way_once() -> None:
    late = UpstreamTimeout("no first chunk within 30 s", provider="a")
    attempts = [failed("a", busy("a")), failed("a", late), failed("a", busy("a"))]
    (line,) = AllProvidersFailed("m", attempts).by_entry()
    assert line == f"a (3 attempts): HTTP 503 from {URL}, then no first chunk within 30 s"


def test_attempts_of_other_models_and_without_errors_are_told_apart() -> None:
    garbage = UpstreamProtocolError("malformed event", provider="b")
    attempts = [failed("b", garbage, "big"), failed("b", garbage, "small"), failed("c", None)]
    lines = str(AllProvidersFailed("big", attempts)).splitlines()[1:]
    assert lines == [
        "  - b (big): malformed event",
        "  - b (small): malformed event",
        "  - c (m): hedge_lost",
    ]
    assert str(AllProvidersFailed("m", [])).splitlines()[1] == "  - no provider was tried"


def test_a_connection_closed_mid_answer_says_how_much_had_arrived() -> None:
    cut = UpstreamConnectionError.closed_mid_answer("up")
    assert str(cut) == "up: the upstream closed the connection before the end of the answer"
    counted = cut.after_chars(812)
    assert str(counted) == "up: the upstream closed the connection after 812 characters"
    assert (counted.broke_off, counted.retryable, counted.__cause__) == (True, True, cut)
    refused = UpstreamConnectionError("cannot connect", provider="up")
    assert refused.after_chars(3) is refused


def test_an_unknown_provider_type_gets_the_closest_name() -> None:
    known = ["anthropic", "darkai", "gemini", "openai", "simulated"]
    assert str(ProviderNotFoundError("opnai", known)) == (
        "unknown provider 'opnai' (did you mean `openai`?); "
        "known providers: anthropic, darkai, gemini, openai, simulated"
    )
    assert "did you mean" not in str(ProviderNotFoundError("xyz", known))


def test_the_failed_line_of_verbose_output_counts_in_words() -> None:
    render = HumanRenderer(colors=False)

    def line(**fields: object) -> str:
        return render(None, "warning", {"event": "route.failed", **fields})

    assert line(attempts=1, error_type="UpstreamConnectionError") == "failed after 1 attempt"
    assert line(attempts=2, reasons=["a (2 attempts): HTTP 503"]) == (
        "failed after 2 attempts: a (2 attempts): HTTP 503"
    )


class Entry(BaseModel):
    models: list[str] | Literal["discover"] | None = None
    after_ms: float | Literal["p95"] = 1.0
    weight: float = 1.0

    @field_validator("weight")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("weight must be positive")
        return value


def problems(data: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Entry.model_validate(data)
    return describe_validation_error(caught.value, model=Entry)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"models": "gpt-4o"},
            """models: expected a list or 'discover', got 'gpt-4o' """
            """(a list of one is written ["gpt-4o"])""",
        ),
        ({"models": 5}, "models: expected a list or 'discover', got 5"),
        ({"models": {"a": 1}}, "models: expected a list or 'discover', got a mapping"),
        ({"after_ms": "soon"}, "after_ms: expected a number or 'p95', got 'soon'"),
        ({"after_ms": None}, "after_ms: expected a number or 'p95', got null"),
        # Inside a value of the right type, the problem is where it is.
        ({"models": ["a", 1]}, "models.1: Input should be a valid string"),
        ({"weight": -1}, "weight: weight must be positive"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_sentence(data: object, message: str) -> None:
    assert problems(data) == message
