"""Cooldown of failing provider entries: a small circuit breaker per entry.

closed --(``failures`` consecutive failures)--> open --(``seconds`` later)--> half-open:
one request may try; its success closes the circuit, its failure opens it again. A
failure while open (a request that started before the circuit opened) extends the
cooldown. State sits behind :class:`HealthStore` so the shared backend
(``polyroute.router.state``) can replace the in-memory one without touching the
router: reads are synchronous (a shared backend answers them from a local mirror),
the two decisions that must be atomic across processes are coroutines. People read
the states as "healthy", "cooling down (12 s left)" and "on trial" (:func:`describe`).
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

    async def admit(self, name: str) -> bool:
        """May a request try ``name`` now? Claims the single half-open probe."""
        ...

    def record_success(self, name: str) -> None: ...

    async def record_failure(self, name: str) -> bool:
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

    async def admit(self, name: str) -> bool:
        return self.admit_now(name)

    def admit_now(self, name: str) -> bool:
        """:meth:`admit`, without a coroutine."""
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

    async def record_failure(self, name: str) -> bool:
        return self.record_failure_now(name)

    def record_failure_now(self, name: str) -> bool:
        """:meth:`record_failure`, without a coroutine."""
        circuit = self._circuit(name)
        circuit.failures += 1
        if circuit.open_until is None and circuit.failures < self.threshold:
            return False
        now = self._clock()
        was_open = circuit.open_until is not None and now < circuit.open_until
        circuit.probing = False
        circuit.open_until = now + self.seconds
        return not was_open

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

    def is_clean(self, name: str) -> bool:
        """Closed with no failure counted: a success would change nothing."""
        circuit = self._circuits.get(name)
        return circuit is None or (circuit.failures == 0 and circuit.open_until is None)

    def set_circuit(
        self, name: str, *, failures: int, seconds_left: float | None, probing: bool
    ) -> None:
        """Take a circuit's state from elsewhere (a shared backend's report):
        ``seconds_left`` ``None`` for closed, negative when the cooldown is over."""
        if failures == 0 and seconds_left is None:
            self._circuits.pop(name, None)
            return
        circuit = self._circuit(name)
        circuit.failures = failures
        circuit.open_until = None if seconds_left is None else self._clock() + seconds_left
        circuit.probing = probing

    def open_circuits(self) -> dict[str, tuple[int, float]]:
        """Entries cooling down now: failures and seconds left."""
        return {
            name: (circuit.failures, left)
            for name, circuit in self._circuits.items()
            if (left := self.seconds_left(name)) > 0
        }


def describe(health: HealthStore, name: str) -> str:
    """An entry's state in words for tables and readiness reports."""
    state = health.state(name)
    if state == "closed":
        return "healthy"
    if state == "half-open":
        return "on trial (next request probes it)"
    left = health.seconds_left(name)
    return f"cooling down ({left:.0f} s left)" if left else "on trial (a probe is running)"
