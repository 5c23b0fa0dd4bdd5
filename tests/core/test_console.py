"""Events as short lines for people: what each decision reads like."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
import structlog

from polyroute.core.console import HumanRenderer
from polyroute.core.logging import configure_logging, get_logger
from tests.conftest import restore_silent_logging

PLAIN = HumanRenderer(colors=False)


def line(event: str, level: str = "info", **fields: Any) -> str:
    return PLAIN(None, level, {"event": event, "level": level, "request_id": "r1", **fields})


def test_each_routing_decision_is_one_short_line() -> None:
    assert (
        line(
            "route.start",
            requested_model="smart",
            model="gpt-4o",
            candidates=["a", "b"],
            fallbacks=["mini"],
        )
        == "smart = gpt-4o: a, b; then model mini"
    )
    assert (
        line("attempt.failed", "warning", provider="a", error="a: HTTP 503: busy")
        == "a  HTTP 503: busy"
    )
    assert (
        line("attempt.retry", provider="a", delay_s=0.1712, retry=1, retries=2)
        == "-> retry a (1/2) in 0.17 s"
    )
    assert line("route.next_provider", to_provider="b") == "-> next provider b"
    assert line("route.fallback", to_provider="b", to_model="mini") == "-> fallback model mini on b"
    assert line("stream.first_chunk", provider="b", ttft_ms=211.6) == "b  first chunk in 212 ms"
    relay = line("route.relay", from_provider="a", to_provider="b", mode="continue", chars=32)
    assert relay == "-> b continues the answer (a died after 32 chars)"
    done = line(
        "route.done",
        provider="b",
        chars=53,
        attempts=2,
        duration_ms=412.4,
        prompt_tokens=9,
        completion_tokens=12,
    )
    assert done == "done 53 chars, 2 attempts, 412 ms, 9+12 tokens (b)"
    assert line("provider.cooldown", "warning", provider="a", seconds=30.0) == (
        "a  cooling down for 30 s"
    )


def test_other_events_keep_their_fields_but_not_the_machine_ones() -> None:
    assert line("gateway.request", status=200, path="/v1/models") == (
        "gateway.request  status=200 path=/v1/models"
    )
    # A known event without its usual fields is still shown, in the generic form.
    assert line("route.done", provider="b") == "route.done  provider=b"


def test_attempt_start_is_left_to_the_lines_around_it() -> None:
    with pytest.raises(structlog.DropEvent):
        line("attempt.start", provider="a")


def test_colour_marks_warnings_and_the_end_only_when_asked() -> None:
    coloured = HumanRenderer(colors=True)
    warning = coloured(None, "warning", {"event": "attempt.failed", "provider": "a", "error": "x"})
    assert warning == "\x1b[33ma  x\x1b[0m"
    assert "\x1b[" not in line("attempt.failed", "warning", provider="a", error="x")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("no_color", "coloured"), [("", True), ("1", False)])
def test_a_terminal_gets_human_lines_coloured_unless_no_color(
    monkeypatch: pytest.MonkeyPatch, no_color: str, coloured: bool
) -> None:
    monkeypatch.setenv("NO_COLOR", no_color)
    terminal = Terminal()
    configure_logging(level=logging.INFO, stream=terminal)
    try:
        get_logger().warning("attempt.failed", provider="a", error="a: HTTP 503")
    finally:
        restore_silent_logging()
    assert terminal.getvalue() == ("\x1b[33ma  HTTP 503\x1b[0m\n" if coloured else "a  HTTP 503\n")
