"""Handing an unfinished answer to another provider: the seam and the restart marker."""

from __future__ import annotations

from polyroute.core.deltas import RestartDelta

SEAM_WINDOW = 200
"""How many of the last delivered characters a continuation may repeat and have dropped."""
SEAM_MIN_OVERLAP = 6
"""Shorter matches are taken as coincidence (a repeated space or short word), not a
repeat, unless they repeat the whole delivered text."""


class Seam:
    """Drops what a continuing provider repeats of the text the caller already has.

    The continuation is held back only while it could still be a repeat (while it
    occurs inside the last ``window`` delivered characters); then the longest prefix
    of it that is also a suffix of the delivered text is dropped, and everything after
    passes through untouched.
    """

    __slots__ = ("_min_overlap", "_pending", "_tail", "dropped", "settled")

    def __init__(
        self, delivered: str, *, window: int = SEAM_WINDOW, min_overlap: int = SEAM_MIN_OVERLAP
    ) -> None:
        self._tail = delivered[-window:]
        self._min_overlap = min_overlap
        self._pending = ""
        self.dropped = 0
        """Characters dropped as a repeat, once settled."""
        self.settled = False

    def feed(self, text: str) -> str:
        """The part of ``text`` to deliver now (empty while still undecided)."""
        if self.settled:
            return text
        self._pending += text
        if self._pending in self._tail and len(self._pending) < len(self._tail):
            return ""
        return self._settle()

    def flush(self) -> str:
        """At the end of the continuation: whatever was held back and is not a repeat."""
        return "" if self.settled else self._settle()

    def _settle(self) -> str:
        self.settled = True
        pending, tail = self._pending, self._tail
        for size in range(min(len(tail), len(pending)), 0, -1):
            # A short match is coincidence unless it repeats everything delivered so far.
            if size < self._min_overlap and size < len(tail):
                break
            if tail.endswith(pending[:size]):
                self.dropped = size
                break
        self._pending = ""
        return pending[self.dropped :]


class StreamRestarted(str):
    """Yielded (as an empty string) when a stream starts over after a failure.

    In ``on_midstream_failure: restart`` mode, the text before this marker was the
    failed provider's partial answer; what follows is a new provider's whole answer.
    Check ``isinstance(text, StreamRestarted)`` to reset what you collected; printing
    it prints nothing. ``discarded`` is how many characters came before it;
    ``provider`` is the entry that starts over.
    """

    discarded: int
    provider: str

    def __new__(cls, *, discarded: int, provider: str) -> StreamRestarted:
        marker = super().__new__(cls, "")
        marker.discarded = discarded
        marker.provider = provider
        return marker

    @classmethod
    def of(cls, marker: RestartDelta) -> StreamRestarted:
        """The text-iteration form of a :class:`RestartDelta`."""
        return cls(discarded=marker.discarded, provider=marker.provider)

    def __repr__(self) -> str:
        return f"StreamRestarted(discarded={self.discarded}, provider={self.provider!r})"
