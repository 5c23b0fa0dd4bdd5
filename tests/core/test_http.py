from __future__ import annotations

import email.utils

import pytest
from aioresponses import aioresponses

from polyroute import (
    AuthenticationError,
    RateLimitedError,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from polyroute.core.http import (
    SessionOwner,
    parse_retry_after,
    status_error,
    stream_event_batches,
)
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.scripted import Script

URL = "http://127.0.0.1:1/chat"


def test_retry_after_in_seconds() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5


def test_retry_after_as_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(30.0)


@pytest.mark.parametrize("value", [None, "", "soon", "-5x"])
def test_retry_after_unparseable_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_retry_after_in_the_past_is_zero() -> None:
    assert parse_retry_after(email.utils.formatdate(0, usegmt=True)) == 0.0


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, UpstreamStatusError, False),
        (401, AuthenticationError, False),
        (403, AuthenticationError, False),
        (404, UpstreamStatusError, False),
        (408, UpstreamStatusError, True),
        (429, RateLimitedError, True),
        (500, UpstreamStatusError, True),
        (503, UpstreamStatusError, True),
    ],
)
def test_status_mapping(status: int, kind: type[UpstreamStatusError], retryable: bool) -> None:
    error = status_error(status, provider="p", body="nope", headers={"Retry-After": "3"})
    assert type(error) is kind
    assert (error.status, error.retryable, error.provider) == (status, retryable, "p")
    assert error.retry_after == (None if kind is AuthenticationError else 3.0)


def test_status_body_is_cut_short_and_redacted() -> None:
    error = status_error(500, provider="p", body="key sk-abcdefghijklmnop " + "x" * 1000)
    assert "sk-abcdefghijklmnop" not in str(error)
    assert len(str(error)) < 400
    assert len(error.body) <= 2048


async def collect_events(owner: SessionOwner) -> list[str]:
    batches = stream_event_batches(owner.session, URL, provider="p", body={})
    return [event.data async for batch in batches for event in batch]


async def test_client_side_timeout_becomes_upstream_timeout() -> None:
    owner = SessionOwner()
    with aioresponses() as mocked:
        mocked.post(URL, exception=TimeoutError())
        with pytest.raises(UpstreamTimeout):
            await collect_events(owner)
    await owner.aclose()


async def test_client_side_reset_becomes_connection_error() -> None:
    owner = SessionOwner()
    with aioresponses() as mocked:
        mocked.post(URL, exception=ConnectionResetError("reset by peer"))
        with pytest.raises(UpstreamConnectionError, match="reset by peer") as caught:
            await collect_events(owner)
    assert caught.value.retryable is True
    await owner.aclose()


async def test_session_owner_reuses_and_closes_its_session() -> None:
    owner = SessionOwner()
    first = owner.session
    assert owner.session is first
    assert owner.is_open
    await owner.aclose()
    await owner.aclose()
    assert first.closed
    assert not owner.is_open


async def test_an_answer_sent_at_once_yields_its_first_events_before_the_rest(
    openai_upstream: OpenAIUpstream,
) -> None:
    # 200 events in one write: the first ones go up before the rest is decoded, so the
    # first chunk leaves a gateway without waiting for the whole answer's parsing.
    events = [f'{{"n": {n}, "text": "{"x" * 100}"}}' for n in range(200)]
    openai_upstream.default = Script(raw="".join(f"data: {e}\n\n" for e in events).encode())
    url = f"{openai_upstream.base_url}/chat/completions"
    owner = SessionOwner()
    sizes, received = [], []
    async for batch in stream_event_batches(owner.session, url, provider="p", body={}):
        sizes.append(len(batch))
        received += [event.data for event in batch]
    await owner.aclose()
    assert received == events
    assert 0 < sizes[0] < 20
