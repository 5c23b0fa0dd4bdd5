"""The verdict on what a client saw: each rule on its own."""

from __future__ import annotations

import json

import pytest

from polyroute.conformance.faults import FAULTS_BY_NAME, expected_call, expected_text
from polyroute.conformance.suite import Seen, classify, read_event
from polyroute.conformance.upstreams import Continuation, Exchanges

CUT = FAULTS_BY_NAME["cut-mid-answer"]
TOOL = FAULTS_BY_NAME["cut-in-tool-call"]
WHOLE = expected_text(CUT.name)


def asked(*continuations: Continuation) -> Exchanges:
    return Exchanges(fault_requests=1, backup_requests=1, continuations=list(continuations))


def ended(text: str) -> Seen:
    return Seen(text=text, finish_reason="stop", done=True)


def test_the_whole_answer_with_its_normal_end_is_complete() -> None:
    result = classify(CUT, ended(WHOLE), asked())
    assert (result.outcome, result.detail) == ("complete", "the whole answer, from the backup")


def test_the_whole_answer_across_a_continuation_is_continued() -> None:
    result = classify(CUT, ended(WHOLE), asked(Continuation("prefill", 95)))
    assert result.outcome == "continued"
    assert result.detail == (
        "the whole answer; the backup continued it after 95 characters (prefill)"
    )


def test_a_cut_answer_with_its_normal_end_is_a_silent_truncation() -> None:
    result = classify(CUT, ended(WHOLE[:95]), asked())
    assert result.outcome == "silent_truncation"
    assert result.detail.endswith(f"it holds 95 of the {len(WHOLE)} expected characters")


def test_a_doubled_seam_is_caught_character_for_character() -> None:
    spliced = WHOLE[:95] + WHOLE[90:]
    result = classify(CUT, ended(spliced), asked(Continuation("instruction", 95)))
    assert result.outcome == "silent_truncation"
    assert "differs from the expected answer at character 95" in result.detail


@pytest.mark.parametrize(
    ("seen", "detail"),
    [
        (Seen(text=WHOLE[:95]), "the stream ended when the connection closed, no finish_reason"),
        (Seen(text=WHOLE[:95], done=True), "the stream ended with [DONE], no finish_reason"),
        (
            Seen(text=WHOLE[:95], finish_reason="stop"),
            "finish_reason 'stop', then the stream ended without [DONE]",
        ),
        (Seen(text=WHOLE[:95], error="an error event: boom"), "after 95 characters, an error"),
    ],
)
def test_a_stream_without_its_normal_end_is_a_visible_error(seen: Seen, detail: str) -> None:
    result = classify(CUT, seen, asked())
    assert result.outcome == "visible_error"
    assert result.detail.startswith(detail)


def test_a_tool_call_is_compared_as_json_and_a_cut_one_is_silent() -> None:
    name, arguments = expected_call()
    reformatted = json.dumps(json.loads(arguments), separators=(",", ":"))
    whole = Seen(calls={0: [name, reformatted]}, finish_reason="tool_calls", done=True)
    assert classify(TOOL, whole, asked()).outcome == "complete"
    cut = Seen(calls={0: [name, arguments[:20]]}, finish_reason="tool_calls", done=True)
    assert classify(TOOL, cut, asked()).outcome == "silent_truncation"


def test_an_answer_that_never_reached_the_fault_says_it_was_not_exercised() -> None:
    result = classify(CUT, ended(WHOLE), Exchanges(backup_requests=1))
    assert result.outcome == "complete"
    assert "the fault was not exercised" in result.detail


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ('{"choices": [{"delta": {"content": "x', "a chunk that is not JSON"),
        ('{"error": {"message": "overloaded"}}', "an error event: overloaded"),
        ("[1, 2]", "a chunk that is not a JSON object"),
        ('{"choices": [{"delta": "text"}]}', "a chunk the client cannot read"),
    ],
)
def test_the_client_stops_at_what_an_openai_client_raises_on(data: str, error: str) -> None:
    seen = Seen()
    assert read_event(data, "message", seen) is True
    assert seen.error is not None
    assert seen.error.startswith(error)
