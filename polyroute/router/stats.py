"""Rolling per-entry figures: time to first chunk, throughput, error rate.

Updated once per attempt (never per chunk), read when ordering candidates and when
deciding when to hedge.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

EWMA_WEIGHT = 0.2
"""Weight of the newest observation: about the last ten attempts dominate."""
TTFT_WINDOW = 200
TYPICAL_ANSWER_CHARS = 1000
"""Answer length assumed when estimating the time to a complete answer."""


def _ewma(previous: float | None, value: float) -> float:
    return value if previous is None else previous + EWMA_WEIGHT * (value - previous)


@dataclass(slots=True)
class EntryStats:
    """Figures of one provider entry; ``None`` until observed."""

    ttft_ms: float | None = None
    """EWMA of the time to first chunk."""
    chars_per_s: float | None = None
    """EWMA of streaming speed after the first chunk."""
    error_rate: float = 0.0
    """EWMA of failures (1) and successes (0)."""
    attempts: int = 0
    recent_ttft: deque[float] = field(default_factory=lambda: deque(maxlen=TTFT_WINDOW))

    def record_first_chunk(self, ttft_ms: float) -> None:
        self.ttft_ms = _ewma(self.ttft_ms, ttft_ms)
        self.recent_ttft.append(ttft_ms)

    def record_success(self, chars: int, streaming_ms: float) -> None:
        self._record_outcome(0.0)
        if chars and streaming_ms > 0:
            self.chars_per_s = _ewma(self.chars_per_s, chars / (streaming_ms / 1000))

    def record_failure(self) -> None:
        self._record_outcome(1.0)

    def _record_outcome(self, failed: float) -> None:
        # The first outcome is the whole estimate, not a fifth of it.
        self.error_rate = _ewma(self.error_rate if self.attempts else None, failed)
        self.attempts += 1

    def p95_ttft_ms(self) -> float | None:
        """The 95th percentile of the recent times to first chunk."""
        if not self.recent_ttft:
            return None
        ordered = sorted(self.recent_ttft)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def latency_ms(self) -> float:
        """Time to first chunk for ordering: 0 when never tried (so it gets measured
        early), infinite when every try failed before a first chunk."""
        if self.ttft_ms is not None:
            return self.ttft_ms
        return 0.0 if self.attempts == 0 else math.inf

    def expected_ms(self, chars: int = TYPICAL_ANSWER_CHARS) -> float:
        """Expected time to a complete answer, counting failed tries as wasted ones;
        0 when never tried, infinite when every try failed before a first chunk."""
        if self.ttft_ms is None:
            return self.latency_ms()
        streaming = chars / self.chars_per_s * 1000 if self.chars_per_s else 0.0
        success = max(0.05, 1.0 - self.error_rate)
        return (self.ttft_ms + streaming) / success


class StatsBook:
    """:class:`EntryStats` by entry name."""

    def __init__(self) -> None:
        self._entries: dict[str, EntryStats] = {}

    def __getitem__(self, name: str) -> EntryStats:
        stats = self._entries.get(name)
        if stats is None:
            stats = self._entries[name] = EntryStats()
        return stats
