"""How a failure becomes a client's error object: every ``code`` in snake_case, like
the gateway's own (``model_not_found``, ``budget_exceeded``)."""

from __future__ import annotations

import re

import pytest

from polyroute import (
    AllProvidersFailed,
    Attempt,
    AuthenticationError,
    ContextLengthExceededError,
    PolyrouteError,
    RateLimitedError,
    ToolCallInterruptedError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from polyroute.core.deltas import AssistantMessage
from polyroute.server.dialects.errors import classify, openai_error

CUT = UpstreamConnectionError.closed_mid_answer("up", 812)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (CUT, "upstream_connection_error"),
        (UpstreamStatusError(500, provider="up"), "upstream_status_error"),
        (RateLimitedError(429, provider="up"), "rate_limited_error"),
        (AuthenticationError(401, provider="up"), "authentication_error"),
        (ContextLengthExceededError(400, provider="up"), "context_length_exceeded_error"),
        (UpstreamProtocolError("garbage", provider="up"), "upstream_protocol_error"),
        (UpstreamError("inside the stream", provider="up"), "upstream_error"),
        (ToolCallInterruptedError(CUT, AssistantMessage(None)), "tool_call_interrupted_error"),
        (UpstreamTimeout("idle", provider="up"), "upstream_timeout"),
        (AllProvidersFailed("m", [Attempt("up", "m", "failed", CUT)]), "all_providers_failed"),
    ],
)
def test_every_upstream_failure_has_a_snake_case_code(error: PolyrouteError, code: str) -> None:
    wire = openai_error(classify(error))
    assert wire.body["error"]["code"] == wire.code == code
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code)


def test_a_cut_reads_as_what_happened() -> None:
    failure = classify(ToolCallInterruptedError(CUT, AssistantMessage(None)))
    assert failure.message.endswith("(the upstream closed the connection after 812 characters)")
