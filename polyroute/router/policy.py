"""Which providers to try, for which models, in which order.

Pure decisions over the configured entries and the health store: no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from polyroute.core.errors import ModelNotSupportedError
from polyroute.providers.base import AsyncGeneratorProvider
from polyroute.router.health import HealthStore
from polyroute.router.stats import StatsBook

Order = Literal["priority", "latency", "adaptive"]


@dataclass(frozen=True, slots=True)
class Entry:
    """A configured provider instance and its place in the priority order."""

    provider: AsyncGeneratorProvider
    priority: int = 0
    discover: bool = False
    """Fetch the model list from the upstream when the router starts."""

    @property
    def name(self) -> str:
        return self.provider.entry_name


@dataclass(frozen=True, slots=True)
class Candidate:
    """An entry chosen to serve ``model`` under the upstream name ``upstream_model``."""

    entry: Entry
    model: str
    upstream_model: str

    @property
    def name(self) -> str:
        return self.entry.name


class RoutingPolicy:
    """Resolves requested names and picks candidates in priority order."""

    def __init__(
        self,
        entries: Sequence[Entry],
        *,
        aliases: Mapping[str, str],
        fallbacks: Mapping[str, Sequence[str]],
    ) -> None:
        # sorted() is stable: entries of equal priority keep their configured order.
        self.entries = sorted(entries, key=lambda entry: entry.priority)
        self.aliases = dict(aliases)
        self.fallbacks = {model: list(chain) for model, chain in fallbacks.items()}

    def resolve_alias(self, name: str) -> str:
        """Follow router aliases to the end (the config guarantees no cycle)."""
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def model_chain(self, requested: str) -> list[str]:
        """The resolved model, then its fallback chain, each resolved, without repeats.

        Raises :class:`ModelNotSupportedError` listing what the router can serve when
        no configured entry (working or not) serves any model of the chain.
        """
        model = self.resolve_alias(requested)
        chain: list[str] = []
        for name in [model, *self.fallbacks.get(model, [])]:
            resolved = self.resolve_alias(name)
            if resolved not in chain:
                chain.append(resolved)
        if not any(entry.provider.serves(name) for name in chain for entry in self.entries):
            raise ModelNotSupportedError(requested, supported=self.known_models())
        return chain

    def candidates(
        self,
        model: str,
        health: HealthStore,
        stats: StatsBook | None = None,
        order: Order = "priority",
    ) -> tuple[list[Candidate], list[str]]:
        """Entries that can serve ``model`` now, in order, and why the others cannot.

        ``order``: ``priority`` (configured), ``latency`` (lowest time to first chunk
        first) or ``adaptive`` (lowest expected time to a complete answer, failures
        counted); configured priority breaks ties, and unmeasured entries come first so
        that they get measured.
        """
        chosen: list[Candidate] = []
        excluded: list[str] = []
        for entry in self.entries:
            provider = entry.provider
            if not provider.serves(model):
                continue
            if not provider.working:
                excluded.append(f"{entry.name} ({model}): not working")
            elif not provider.supports_stream:
                excluded.append(f"{entry.name} ({model}): cannot stream")
            elif health.state(entry.name) == "open":
                excluded.append(f"{entry.name} ({model}): cooling down")
            else:
                chosen.append(Candidate(entry, model, provider.get_model(model)))
        if stats is not None and order == "latency":
            chosen.sort(key=lambda candidate: stats[candidate.name].latency_ms())
        elif stats is not None and order == "adaptive":
            chosen.sort(key=lambda candidate: stats[candidate.name].expected_ms())
        return chosen, excluded

    def known_models(self) -> list[str]:
        """Every name the router can route: models, provider aliases, router aliases, chains."""
        names: set[str] = set(self.aliases) | set(self.fallbacks)
        for entry in self.entries:
            names.update(entry.provider.models)
            names.update(entry.provider.model_aliases)
        return sorted(names)
