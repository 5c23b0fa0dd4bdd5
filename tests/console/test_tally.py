"""The console's figures (polyroute.server.console_live): one point a second however the
seconds come, failed attempts and the last error per entry, the last minute per entry."""

from __future__ import annotations

from typing import Any

import pytest

from polyroute.core.attempts import Attempt
from polyroute.core.errors import UpstreamStatusError
from polyroute.server.console_live import HISTORY_SECONDS, History, Tally, percentile


def attempt(provider: str, error: BaseException | None = None) -> Attempt:
    return Attempt(provider, "m", "failed" if error else "ok", error=error)


def test_a_point_a_second_with_empty_points_for_skipped_seconds() -> None:
    history = History()
    point = {"requests": 1, "failed_requests": 0, "errors": 0, "ttft_p50_ms": 5.0,
             "ttft_p99_ms": 9.0, "cost_usd": 0.0}  # fmt: skip
    history.add(100, point)
    history.add(103, point)  # the loop stalled for two seconds
    shown = history.as_json()
    assert shown["end"] == 103
    assert shown["series"]["requests"] == [1, 0, 0, 1]
    assert shown["series"]["ttft_p50_ms"] == [5.0, None, None, 5.0]
    for second in range(104, 104 + HISTORY_SECONDS):
        history.add(second, point)
    assert len(history.as_json()["series"]["requests"]) == HISTORY_SECONDS  # an hour, no more


def test_failed_attempts_count_as_errors_and_keep_each_entrys_last_error() -> None:
    tally = Tally()
    overloaded = UpstreamStatusError(503, provider="up", body="<b>overloaded</b>")
    relayed = [attempt("up", overloaded), attempt("backup")]
    common: dict[str, Any] = {"ttft_ms": 12.0, "cost_usd": 0.002}
    tally.add("r1", failed=False, attempts=relayed, provider="backup", tokens=120, **common)
    tally.add("r2", failed=True, attempts=[], provider=None, tokens=0, **common)
    point = tally.tick(tally._now)
    assert (point["requests"], point["failed_requests"], point["errors"]) == (2, 1, 1)
    assert point["ttft_p50_ms"] == 12.0
    assert point["cost_usd"] == pytest.approx(0.004)
    last = tally._entries["up"].last_error
    assert last is not None
    assert (last["type"], last["status_code"], last["request_id"]) == (
        "UpstreamStatusError",
        503,
        "r1",
    )
    assert "<b>overloaded</b>" in last["message"]  # as text: the page renders it so
    assert tally._entries["backup"].last_error is None
    assert tally._entries["backup"].last_minute(tally._now) == (1, 120)
    assert tally._entries["up"].last_minute(tally._now + 60) == (0, 0)  # a minute later


def test_the_nearest_rank_percentile() -> None:
    assert percentile([], 0.5) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
