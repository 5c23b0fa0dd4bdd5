"""Records of one try at one provider: what the upstream reported, and how it went."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from polyroute.core.deltas import Usage


@dataclass(slots=True)
class Attempt:
    """One try of one provider entry for one model.

    ``outcome`` is ``"ok"``, ``"failed"``, ``"cancelled"``, ``"hedge_lost"``,
    ``"gateway_overloaded"`` (the process's own trouble, not the entry's) or
    ``"running"``. Times are in milliseconds; ``ttft_ms`` is ``None`` when nothing of
    the answer arrived. ``finish_reason`` and ``usage`` are what the upstream reported.
    ``started`` is a ``time.perf_counter()`` reading, for ordering attempts in time.
    """

    provider: str
    model: str
    outcome: str = "running"
    error: BaseException | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    chars: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    dropped: list[str] = field(default_factory=list)
    """What of the request this entry did not send on (see ``Provider.dropped``)."""
    relay_offset: int = 0
    """Characters of the answer already delivered when this attempt was asked (0 for
    the first): where it took over, for a relay."""
    started: float = field(default_factory=time.perf_counter, repr=False)

    def elapsed_ms(self) -> float:
        """Milliseconds since the attempt started."""
        return round((time.perf_counter() - self.started) * 1000, 3)

    def describe(self) -> str:
        """One line for humans: provider, model, and what went wrong."""
        text = f"{self.provider} ({self.model}): {self.outcome}"
        if self.error is not None:
            text += f" - {type(self.error).__name__}: {self.error}"
        return text
