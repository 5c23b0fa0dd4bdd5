"""Every fault, on each wire format, through router.stream with a healthy fallback.

A fault before the first chunk must be invisible: the caller gets the fallback's
whole answer. A fault after it must surface as the typed error, with the partial
text on the stream. Both leave the right attempts and events behind.
docs/reliability.md shows this matrix as a table.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from structlog.testing import capture_logs

from polyroute import (
    AuthenticationError,
    RateLimitedError,
    Router,
    UpstreamConnectionError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from tests.router.helpers import HI, FakeSleep
from tests.upstreams.anthropic import AnthropicUpstream
from tests.upstreams.darkai import DarkAIUpstream
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script, ScriptedUpstream

PARTIAL = ("Par", "tial", " answer", " lost")
EXPECTED = "Hello, world!"
DNS_URL = "http://unresolvable.invalid"


@dataclass(frozen=True)
class Fault:
    name: str
    error: type[Exception]
    tries: int = 1
    """How many times the faulty entry is tried (2 when the error is retryable)."""
    after_text: bool = False
    script: dict[str, Any] | None = None
    per_format: dict[str, dict[str, Any]] = field(default_factory=dict)
    timeouts: dict[str, float] = field(default_factory=dict)
    delays: tuple[float, float] | None = None
    """Bounds of the one backoff delay expected before the retry."""
    partial: str = "Partial"
    """The text the caller holds when a fault after the first chunk is raised."""


def http_date_in(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


def status(code: int, error: type[Exception], tries: int, **headers: str) -> Fault:
    name = f"HTTP {code}" + (f" Retry-After {headers['Retry-After']}" if headers else "")
    return Fault(name, error, tries, script={"status": code, "headers": headers})


FAULTS = [
    Fault("connection refused", UpstreamConnectionError, 2),
    Fault(
        "reset before headers", UpstreamConnectionError, 2, script={"reset_before_headers": True}
    ),
    Fault(
        "reset mid-body",
        UpstreamConnectionError,
        after_text=True,
        script={"chunks": PARTIAL, "reset_after": 2},
    ),
    Fault("DNS failure", UpstreamConnectionError, 2),
    status(400, UpstreamStatusError, 1),
    status(401, AuthenticationError, 1),
    status(403, AuthenticationError, 1),
    status(404, UpstreamStatusError, 1),
    status(408, UpstreamStatusError, 2),
    status(413, UpstreamStatusError, 1),
    status(429, RateLimitedError, 2),
    Fault(
        "HTTP 429 Retry-After 1",
        RateLimitedError,
        2,
        script={"status": 429, "headers": {"Retry-After": "1"}},
        delays=(1.0, 1.0),
    ),
    Fault(
        "HTTP 429 Retry-After HTTP-date",
        RateLimitedError,
        2,
        script={"status": 429, "headers": {"Retry-After": "DATE+5"}},
        delays=(3.0, 5.0),
    ),
    status(500, UpstreamStatusError, 2),
    status(502, UpstreamStatusError, 2),
    status(503, UpstreamStatusError, 2),
    status(504, UpstreamStatusError, 2),
    Fault(
        "HTML page with status 200",
        UpstreamProtocolError,
        script={
            "raw": b"<html><body>Service unavailable</body></html>",
            "content_type": "text/html",
        },
    ),
    Fault("wrong content type", UpstreamProtocolError, script={"content_type": "application/json"}),
    Fault("empty body", UpstreamProtocolError, script={"raw": b""}),
    Fault("malformed JSON line", UpstreamProtocolError, script={"raw": b"data: {oops\n\n"}),
    Fault(
        "JSON with missing fields",
        UpstreamProtocolError,
        per_format={
            "darkai": {"raw": b'data: {"event": "text-chunk"}\n\n'},
            "openai": {"raw": b'data: {"id": "chatcmpl-1", "object": "chat.completion.chunk"}\n\n'},
            "anthropic": {
                "raw": b'event: content_block_delta\ndata: {"type": "content_block_delta"}\n\n'
            },
        },
    ),
    Fault(
        "line over 1 MiB",
        UpstreamProtocolError,
        script={"raw": b"data: " + b"x" * (1024 * 1024 + 10) + b"\n\n"},
    ),
    Fault("invalid UTF-8", UpstreamProtocolError, script={"raw": b"data: \xff\xfe\xfd\n\n"}),
    Fault(
        "no terminating event",
        UpstreamProtocolError,
        after_text=True,
        script={"chunks": PARTIAL, "end": False},
        partial="Partial answer lost",
    ),
    Fault(
        "stall before headers",
        UpstreamTimeout,
        2,
        script={"stall_before_headers": True},
        timeouts={"idle": 0.3},
    ),
    Fault(
        "stall before first chunk",
        UpstreamTimeout,
        2,
        script={"chunks": (), "stall_after": 0},
        timeouts={"first_chunk": 0.3},
    ),
    Fault(
        "stall mid-stream",
        UpstreamTimeout,
        after_text=True,
        script={"chunks": PARTIAL, "stall_after": 2},
        timeouts={"idle": 0.3},
    ),
    Fault(
        "slow drip (1 byte / 100 ms)",
        UpstreamTimeout,
        2,
        script={"piece_size": 1, "delay": 0.1},
        timeouts={"total": 0.5},
    ),
]


def make_upstream(wire: str) -> ScriptedUpstream:
    servers = {"darkai": DarkAIUpstream, "openai": OpenAIUpstream, "anthropic": AnthropicUpstream}
    return servers[wire]()


def entry(name: str, wire: str, url: str, **extra: Any) -> dict[str, Any]:
    if wire == "darkai":
        return {"name": name, "type": "darkai", "api_endpoint": url, "working": True, **extra}
    return {"name": name, "type": wire, "api_endpoint": url, "models": [], **extra}


@pytest.fixture(
    params=[
        "darkai",
        "openai",
        "openai relayed as it came",
        "anthropic",
        "anthropic relayed as it came",
    ]
)
async def upstreams(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, ScriptedUpstream, ScriptedUpstream, bool]]:
    """The format's two upstreams, and whether the consumer takes its text chunks as
    the upstream sent them (``pass_through``: the gateway's chat completions, or its
    Messages for Anthropic's format)."""
    wire, relayed = request.param.split(" ")[0], request.param.endswith("came")
    faulty, healthy = make_upstream(wire), make_upstream(wire)
    await faulty.start()
    await healthy.start()
    yield wire, faulty, healthy, relayed
    await faulty.stop()
    await healthy.stop()


def script_for(fault: Fault, wire: str) -> Script:
    options = dict(fault.script or fault.per_format[wire])
    headers = options.get("headers") or {}
    if headers.get("Retry-After") == "DATE+5":
        options["headers"] = {"Retry-After": http_date_in(5)}
    return Script(**options)


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
async def test_fault(
    fault: Fault, upstreams: tuple[str, ScriptedUpstream, ScriptedUpstream, bool]
) -> None:
    wire, faulty, healthy, relayed = upstreams
    faulty_url = faulty.url
    if fault.name == "connection refused":
        await faulty.stop()
    elif fault.name == "DNS failure":
        faulty_url = f"{DNS_URL}{faulty.path}"
    else:
        faulty.default = script_for(fault, wire)
    config = {
        "providers": [
            entry("faulty", wire, faulty_url, timeouts=fault.timeouts),
            entry("healthy", wire, healthy.url),
        ],
        "retry": {"attempts": 2},
        "cooldown": {"failures": 100},
        # This matrix proves the raise-after-text path; relays have their own tests.
        "on_midstream_failure": "raise",
    }
    sleep = FakeSleep()
    with capture_logs() as logs, aioresponses(passthrough=["http://127.0.0.1"]) as mocked:
        if fault.name == "DNS failure":
            key = SimpleNamespace(host="unresolvable.invalid", port=80, ssl=True, is_ssl=False)
            error = aiohttp.ClientConnectorDNSError(key, OSError(-2, "Name or service not known"))  # type: ignore[arg-type]
            mocked.post(faulty_url, exception=error, repeat=True)
        async with Router.from_config(config, sleep=sleep) as router:
            relay = "anthropic" if wire == "anthropic" else "openai"
            stream = router.stream("gpt-4o", HI, pass_through=relay if relayed else None)
            received: list[str] = []
            raised: Exception | None = None
            try:
                async for text in stream:
                    received.append(text)
            except Exception as error:
                raised = error

    outcomes = [
        (a.provider, a.outcome, type(a.error) if a.error else None) for a in stream.attempts
    ]
    failed_events = [log for log in logs if log["event"] == "attempt.failed"]
    assert [log["error_type"] for log in failed_events] == [fault.error.__name__] * fault.tries
    if fault.after_text:
        assert type(raised) is fault.error
        assert stream.text == fault.partial == "".join(received)
        assert outcomes == [("faulty", "failed", fault.error)]
        assert healthy.requests == []
        final = logs[-1]
        assert (final["event"], final["error_type"]) == ("route.failed", fault.error.__name__)
    else:
        assert raised is None, raised
        assert "".join(received) == EXPECTED
        assert outcomes == [("faulty", "failed", fault.error)] * fault.tries + [
            ("healthy", "ok", None)
        ]
        assert stream.provider == "healthy"
        names = [log["event"] for log in logs]
        assert "route.next_provider" in names
        assert names[-1] == "route.done"
    assert len(sleep.delays) == fault.tries - 1
    if fault.delays:
        low, high = fault.delays
        assert low <= sleep.delays[0] <= high
