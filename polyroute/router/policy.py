"""Which providers to try, for which models, in which order.

Pure decisions over the configured entries and the health store: no I/O here. The
requested name is resolved here, once: router aliases to a model, then each entry's
own aliases to the upstream's name (``Candidate.upstream_model``), which is what the
provider is sent as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from polyroute.core.errors import CapabilityNotSupportedError, ModelNotSupportedError
from polyroute.core.request import CAPABILITY_LABELS, Capability
from polyroute.providers.base import Provider
from polyroute.router.config import Order, ToolCallMode
from polyroute.router.health import HealthStore
from polyroute.router.stats import StatsBook


@dataclass(frozen=True, slots=True)
class Entry:
    """A configured provider instance and its place in the priority order."""

    provider: Provider
    priority: int = 0
    discover: bool = False
    """Fetch the model list from the upstream when the router starts."""
    tool_calls: ToolCallMode | None = None
    """This entry's ``tool_calls`` mode, over the route's."""

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

    def chain_of(self, requested: str) -> list[str]:
        """The resolved model, then its fallback chain, each resolved, without repeats."""
        model = self.resolve_alias(requested)
        chain: list[str] = []
        for name in [model, *self.fallbacks.get(model, [])]:
            resolved = self.resolve_alias(name)
            if resolved not in chain:
                chain.append(resolved)
        return chain

    def model_chain(self, requested: str, needs: frozenset[Capability] = frozenset()) -> list[str]:
        """:meth:`chain_of` ``requested``, checked.

        Raises :class:`ModelNotSupportedError` listing what the router can serve when no
        configured entry (working or not) serves any model of the chain, and
        :class:`CapabilityNotSupportedError` when entries serve it but none can do
        what the request ``needs``.
        """
        chain = self.chain_of(requested)
        serving = [
            entry.provider
            for entry in self.entries
            if any(entry.provider.serves(name) for name in chain)
        ]
        if not serving:
            raise ModelNotSupportedError(requested, supported=self.known_models())
        if needs and all(provider.lacks(needs) for provider in serving):
            missing = sorted({need for provider in serving for need in provider.lacks(needs)})
            raise CapabilityNotSupportedError(missing, model=requested)
        return chain

    def candidates(
        self,
        model: str,
        health: HealthStore,
        stats: StatsBook | None = None,
        order: Order = "priority",
        needs: frozenset[Capability] = frozenset(),
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
            reason = _unusable(provider, needs)
            if reason is None and health.state(entry.name) == "open":
                reason = "cooling down"
            if reason is None:
                chosen.append(Candidate(entry, model, provider.get_model(model)))
            else:
                excluded.append(f"{entry.name} ({model}): {reason}")
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


def _unusable(provider: Provider, needs: frozenset[Capability]) -> str | None:
    if not provider.working:
        return "not working"
    if not provider.supports_stream:
        return "cannot stream"
    if needs and (missing := provider.lacks(needs)):
        return "; ".join(CAPABILITY_LABELS[need] for need in missing)
    return None
