"""A fake monotonic clock for the tests that hand one to a component (health, routing
state, grants, the cache): the test sets ``now`` and time moves only then."""

from __future__ import annotations


class Clock:
    """Call it for the time; set ``now`` to move it (1000.0 by default: well past 0,
    as a monotonic clock is)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
