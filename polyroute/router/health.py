"""Cooldown of failing provider entries: a small circuit breaker per entry.

closed --(``failures`` consecutive failures)--> open --(``seconds`` later)--> half-open:
one request may try; its success closes the circuit, its failure opens it again.
State sits behind :class:`HealthStore` so a shared backend can replace the
in-memory one without touching the router. People read the states as "healthy",
"cooling down (12 s left)" and "on trial" (:func:`describe`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

CircuitState = Literal["closed", "open", "half-open"]


class HealthStore(Protocol):
    """What the router needs from a health backend."""

    def state(self, name: str) -> CircuitState:
        """The entry's circuit as of now."""
        ...

    def admit(self, name: str) -> bool:
        """May a request try ``name`` now? Claims the single half-open probe."""
        ...

    def record_success(self, name: str) -> None: ...

    def record_failure(self, name: str) -> bool:
        """Count a failure; True when this failure opened the circuit."""
        ...

    def release(self, name: str) -> None:
        """Give back a probe that ended with neither success nor failure (cancelled)."""
        ...

    def seconds_left(self, name: str) -> float:
        """How long ``name``'s cooldown still lasts (0 when it is not cooling down)."""
        ...


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    open_until: float | None = None
    probing: bool = False


class InMemoryHealth:
    """Per-process :class:`HealthStore`. ``clock`` is injectable for tests."""

    def __init__(
        self, *, failures: int, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = failures
        self.seconds = seconds
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def _circuit(self, name: str) -> _Circuit:
        circuit = self._circuits.get(name)
        if circuit is None:
            circuit = self._circuits[name] = _Circuit()
        return circuit

    def state(self, name: str) -> CircuitState:
        circuit = self._circuits.get(name)
        if circuit is None or circuit.open_until is None:
            return "closed"
        return "open" if self._clock() < circuit.open_until or circuit.probing else "half-open"

    def admit(self, name: str) -> bool:
        state = self.state(name)
        if state == "half-open":
            self._circuits[name].probing = True
            return True
        return state == "closed"

    def record_success(self, name: str) -> None:
        circuit = self._circuits.get(name)
        if circuit is not None:
            circuit.failures = 0
            circuit.open_until = None
            circuit.probing = False

    def record_failure(self, name: str) -> bool:
        circuit = self._circuit(name)
        circuit.failures += 1
        if circuit.probing or (circuit.open_until is None and circuit.failures >= self.threshold):
            circuit.probing = False
            circuit.open_until = self._clock() + self.seconds
            return True
        return False

    def release(self, name: str) -> None:
        circuit = self._circuits.get(name)
        if circuit is not None:
            circuit.probing = False

    def seconds_left(self, name: str) -> float:
        """How long ``name``'s cooldown still lasts (0 when it is not cooling down)."""
        circuit = self._circuits.get(name)
        if circuit is None or circuit.open_until is None:
            return 0.0
        return max(0.0, circuit.open_until - self._clock())

    def failures(self, name: str) -> int:
        """Consecutive failures counted for ``name``."""
        circuit = self._circuits.get(name)
        return circuit.failures if circuit else 0


def describe(health: HealthStore, name: str) -> str:
    """An entry's state in words for tables and readiness reports."""
    state = health.state(name)
    if state == "closed":
        return "healthy"
    if state == "half-open":
        return "on trial (next request probes it)"
    left = health.seconds_left(name)
    return f"cooling down ({left:.0f} s left)" if left else "on trial (a probe is running)"
