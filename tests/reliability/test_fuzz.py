"""Fuzzing each provider's parser behind the SSE decoder: arbitrary input raises only
polyroute's documented errors, and re-chunking never changes the outcome.

The budget comes from the hypothesis profile: short in CI, long with
HYPOTHESIS_PROFILE=fuzz (see tests/conftest.py and docs/reliability.md).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polyroute import PolyrouteError
from polyroute.core.deltas import Delta
from polyroute.core.sse import SSEDecoder
from polyroute.providers import DarkAI, OpenAI, Provider

PROVIDERS = [DarkAI(), OpenAI()]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "event",
                    "data",
                    "text",
                    "choices",
                    "delta",
                    "content",
                    "error",
                    "usage",
                    "finish_reason",
                    "message",
                    "code",
                    "index",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


# Error objects shaped like OpenAI's, with arbitrary values in each field.
error_objects = (
    st.fixed_dictionaries(
        {},
        optional={
            "message": json_values,
            "code": json_values,
            "type": json_values,
            "param": json_values,
        },
    )
    | json_values
)


def outcome(provider: Provider, pieces: list[bytes]) -> list[Any]:
    """What the provider makes of a byte stream: deltas, the end, or the error's type."""
    decoder = SSEDecoder(provider="fuzz", max_line_bytes=4096, framing=provider.framing)
    results: list[Any] = []
    try:
        events = [event for piece in pieces for event in decoder.feed(piece)] + decoder.close()
        for event in events:
            out: list[Delta] = []
            ended = provider.parse_event(event, out)
            results += [*out, "END"] if ended else out
    except PolyrouteError as error:
        results.append(type(error))
    return results


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(body) + 1) for cut in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


@pytest.mark.parametrize("provider", PROVIDERS, ids=["darkai", "openai"])
@given(body=st.binary(max_size=600), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_arbitrary_bytes_give_only_documented_errors_whatever_the_chunking(
    provider: Provider, body: bytes, cuts: list[int]
) -> None:
    assert outcome(provider, split(body, cuts)) == outcome(provider, [body])


@pytest.mark.parametrize("provider", PROVIDERS, ids=["darkai", "openai"])
@given(
    values=st.lists(json_values, min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_arbitrary_json_events_give_only_documented_errors_whatever_the_chunking(
    provider: Provider, values: list[Any], cuts: list[int]
) -> None:
    body = b"".join(b"data: " + json.dumps(value).encode() + b"\n\n" for value in values)
    assert outcome(provider, split(body, cuts)) == outcome(provider, [body])


@given(
    body=st.builds(lambda e: json.dumps({"error": e}), error_objects) | st.text(max_size=200),
    status=st.integers(400, 599),
)
def test_any_error_body_classifies_to_a_polyroute_error(body: str, status: int) -> None:
    from polyroute import UpstreamStatusError

    provider = OpenAI()
    error = UpstreamStatusError(status, provider="openai", body=body)
    assert isinstance(provider.classify_status_error(error, "m"), PolyrouteError)


@given(error=error_objects)
def test_any_error_object_inside_a_stream_raises_a_polyroute_error(error: Any) -> None:
    body = b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
    (result,) = outcome(OpenAI(), [body])
    assert isinstance(result, type)
    assert issubclass(result, PolyrouteError)
