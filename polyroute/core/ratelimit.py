"""Upstreams' rate-limit headers, read once: has this upstream said it has nothing left,
and until when?

OpenAI and most compatible servers send ``x-ratelimit-remaining-requests`` /
``x-ratelimit-reset-requests`` (and ``-tokens``), with resets as durations
(``1s``, ``6m0s``, ``20ms``); Anthropic sends ``anthropic-ratelimit-*-remaining`` /
``-reset`` with RFC 3339 times; some send plain seconds or epoch times.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PAIRS = [
    (f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}")
    for kind in ("requests", "tokens")
] + [
    (f"anthropic-ratelimit-{kind}-remaining", f"anthropic-ratelimit-{kind}-reset")
    for kind in ("requests", "tokens", "input-tokens", "output-tokens")
]


def parse_reset(value: str, *, now: float | None = None) -> float | None:
    """Seconds until a reset given as a duration, seconds, an epoch time or an RFC 3339
    time; ``None`` when it is none of those."""
    value = value.strip()
    now = time.time() if now is None else now
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if number > 1e12:  # epoch milliseconds
            return max(0.0, number / 1000 - now)
        if number > 1e9:  # epoch seconds
            return max(0.0, number - now)
        return max(0.0, number)
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    try:
        return max(0.0, datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - now)
    except ValueError:
        return None


def exhausted_for(headers: Mapping[str, str]) -> float | None:
    """Seconds until the upstream has requests or tokens again, when its headers say it
    has none left now; ``None`` otherwise (headroom left, or no such headers)."""
    longest: float | None = None
    for remaining_name, reset_name in _PAIRS:
        remaining = headers.get(remaining_name)
        if remaining is None or remaining.strip() not in ("0", "0.0"):
            continue
        reset = parse_reset(headers.get(reset_name) or "")
        if reset and (longest is None or reset > longest):
            longest = reset
    return longest
