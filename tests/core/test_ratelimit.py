"""Reading upstreams' rate-limit headers."""

from __future__ import annotations

from datetime import datetime

import pytest

from polyroute.core.ratelimit import exhausted_for, parse_reset

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("12", 12.0),
        ("1800000030", 30.0),  # epoch seconds
        ("1800000030000", 30.0),  # epoch milliseconds
        ("2027-01-15T08:00:30Z", 30.0),
    ],
)
def test_reset_formats(value: str, seconds: float) -> None:
    now = NOW
    if "T" in value:  # an RFC 3339 time: 30 s after "now"
        now = datetime.fromisoformat("2027-01-15T08:00:00+00:00").timestamp()
    assert parse_reset(value, now=now) == pytest.approx(seconds)


def test_an_unreadable_reset_is_none() -> None:
    assert parse_reset("soon", now=NOW) is None


def test_exhausted_only_when_something_is_at_zero() -> None:
    assert (
        exhausted_for({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1s"})
        is None
    )
    assert exhausted_for({}) is None
    headers = {
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert exhausted_for(headers) == 360.0
    assert (
        exhausted_for(
            {
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": "30",
            }
        )
        == 30.0
    )
