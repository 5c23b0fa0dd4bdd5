"""The seam between a partial answer and its continuation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from polyroute import StreamRestarted
from polyroute.router.relay import Seam


def through(seam: Seam, *pieces: str) -> str:
    return "".join(seam.feed(piece) for piece in pieces) + seam.flush()


def test_a_repeated_ending_is_dropped_once() -> None:
    seam = Seam("The quick brown fox jumps")
    assert through(seam, " brown fox", " jumps", " over the dog") == " over the dog"
    assert seam.dropped == len(" brown fox jumps")


def test_a_clean_continuation_passes_at_once() -> None:
    seam = Seam("The quick brown fox")
    assert seam.feed(" jumps over") == " jumps over"
    assert seam.settled
    assert seam.feed(" the dog") == " the dog"


def test_text_held_back_only_while_it_could_be_a_repeat() -> None:
    seam = Seam("one two three four")
    assert seam.feed(" three") == ""  # occurs in what was delivered: wait
    assert seam.feed(" four five") == " five"


def test_a_short_coincidental_match_is_kept() -> None:
    assert through(Seam("Say it again and"), " and so on") == " and so on"


def test_a_repeat_of_everything_delivered_is_dropped_even_when_short() -> None:
    assert through(Seam("Hello"), "Hello", ", world!") == ", world!"


def test_a_continuation_that_only_repeats_is_dropped_entirely() -> None:
    assert through(Seam("alpha beta gamma"), " beta", " gamma") == ""


@given(
    words=st.lists(
        st.sampled_from(["a", "bb", "ccc", "dddd", "eeeee", "x!"]), min_size=4, max_size=40
    ),
    cut=st.integers(min_value=1),
    overlap=st.integers(min_value=0, max_value=12),
    pieces=st.integers(min_value=1, max_value=5),
)
def test_continuing_after_a_word_repeat_rebuilds_the_answer(
    words: list[str], cut: int, overlap: int, pieces: int
) -> None:
    chunks = [f" {word}" for word in words]
    cut = 1 + cut % (len(chunks) - 1)
    delivered = "".join(chunks[:cut])
    restart = max(0, cut - overlap)
    repeated = "".join(chunks[restart:cut])
    if restart and len(repeated) < 6:
        return  # too short to tell from coincidence: kept by design
    continuation = chunks[restart:]
    rest = "".join(continuation)
    if any(delivered.endswith(rest[:size]) for size in range(len(repeated) + 1, len(rest) + 1)):
        return  # periodic text: a longer repeat fits too, and the longest match wins by design
    step = pieces  # the continuation arrives in chunks of several words
    groups = ["".join(continuation[i : i + step]) for i in range(0, len(continuation), step)]
    assert delivered + through(Seam(delivered), *groups) == "".join(chunks)


def test_stream_restarted_is_an_empty_string_with_facts() -> None:
    marker = StreamRestarted(discarded=12, provider="b")
    assert marker == ""
    assert isinstance(marker, str)
    assert (marker.discarded, marker.provider) == (12, "b")
    assert "discarded=12" in repr(marker)


def test_periodic_text_resolves_to_the_longest_repeat() -> None:
    # " bb bb" repeated then " bb" new is indistinguishable from " bb bb bb" repeated:
    # the seam drops the longest match (documented in docs/relay.md).
    assert through(Seam(" bb bb bb"), " bb", " bb", " bb") == ""
