"""Which providers to try, for which models, in which order.

Pure decisions over the configured entries and the routing state: no I/O here. The
requested name is resolved here, once: router aliases (exact names, then glob patterns)
to a model, then each entry's own aliases to the upstream's name
(``Candidate.upstream_model``), which is what the provider is sent as it is.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import NamedTuple

from polyroute.core.errors import CapabilityNotSupportedError, ModelNotSupportedError
from polyroute.core.pricing import Price, catalogue_price
from polyroute.core.request import CAPABILITY_LABELS, Capability
from polyroute.providers.base import Provider
from polyroute.router.config import (
    Balance,
    Limits,
    Order,
    PrefillSetting,
    ToolCallMode,
    is_alias_pattern,
)
from polyroute.router.health import describe
from polyroute.router.state import RoutingState

_CHAIN_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Entry:
    """A configured provider instance and its place in the priority order."""

    provider: Provider
    priority: int = 0
    weight: float = 1.0
    """Share among entries of equal priority (``balance``)."""
    limits: Limits | None = None
    discover: bool = False
    """Fetch the model list from the upstream when the router starts."""
    tool_calls: ToolCallMode | None = None
    """This entry's ``tool_calls`` mode, over the route's."""
    missing_key: str | None = None
    """The environment variable (``api_key_env``) that should hold this entry's key and
    does not: the entry is skipped, not the whole configuration."""
    price: Price | None = None
    """The configured ``price``, over the catalogue's."""
    prefill: PrefillSetting | None = None
    """The configured ``supports_prefill`` (``None``: from the provider's flag)."""

    @property
    def name(self) -> str:
        return self.provider.entry_name

    def price_for(self, model: str) -> Price | None:
        """What ``model`` (the upstream's name) costs on this entry: its configured
        price, else genai-prices' (:func:`catalogue_price`) for types with a catalogue
        (``prices_from``), else ``None`` (unpriced)."""
        if self.price is not None:
            return self.price
        source = self.provider.prices_from
        if source is None:
            return None
        return catalogue_price(model, base_url=self.provider.base_url, provider=source)


class Candidate(NamedTuple):
    """An entry chosen to serve ``model`` under the upstream name ``upstream_model``.
    (A tuple: some are made for every request.)"""

    entry: Entry
    model: str
    upstream_model: str
    name: str
    """The entry's name."""


class RoutingPolicy:
    """Resolves requested names and picks candidates in priority order.

    ``aliases`` keys are model names or ``fnmatch`` patterns (:func:`is_alias_pattern`);
    :meth:`resolve_alias` says how the two combine.
    """

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
        """Every router alias as configured, patterns included."""
        self.fallbacks = {model: list(chain) for model, chain in fallbacks.items()}
        self._exact = {name: to for name, to in aliases.items() if not is_alias_pattern(name)}
        # Longest pattern first; sorted() is stable, so equal lengths keep config order.
        self._patterns = sorted(
            ((name, to) for name, to in aliases.items() if is_alias_pattern(name)),
            key=lambda pattern: -len(pattern[0]),
        )
        self._resolved: dict[str, str] = {}
        self._listed: frozenset[str] | None = None
        self._chains: dict[str, list[str]] = {}
        self._serving: dict[str, list[tuple[Entry, str]]] = {}
        self.by_name = {entry.name: entry for entry in self.entries}

    def resolve_alias(self, name: str) -> str:
        """The model router aliases make of ``name``.

        Exact aliases are followed to the end (the config guarantees no cycle). A name
        reached that way which no entry lists (in its ``models`` or its own aliases) is
        rewritten by the longest pattern that matches it (``fnmatchcase``; on a tie, the
        first configured), and the pattern's target is followed through exact aliases
        only: a pattern applies at most once, so no configuration can loop. Pattern
        results are cached per name until :meth:`models_changed`.
        """
        if not self._patterns:
            return self._follow(name)
        resolved = self._resolved.get(name)
        if resolved is None:
            resolved = self._captured(self._follow(name))
            if len(self._resolved) >= _CHAIN_CACHE_SIZE:
                self._resolved.clear()  # bounded: callers choose the names
            self._resolved[name] = resolved
        return resolved

    def alias_target(self, alias: str) -> str:
        """The model the configured alias ``alias`` (a name or a pattern) leads to."""
        if is_alias_pattern(alias):
            return self._follow(self.aliases[alias])
        return self.resolve_alias(alias)

    def _follow(self, name: str) -> str:
        while name in self._exact:
            name = self._exact[name]
        return name

    def _captured(self, name: str) -> str:
        """``name`` rewritten by the pattern that captures it, if one does."""
        if name in self._listed_names():
            return name  # a name an entry lists explicitly is never redirected
        for pattern, target in self._patterns:
            if fnmatchcase(name, pattern):
                return self._follow(target)
        return name

    def _listed_names(self) -> frozenset[str]:
        # Only explicit lists count: an entry without one serves any name, and taking
        # that as "served" would leave every pattern without effect.
        if self._listed is None:
            names: set[str] = set()
            for entry in self.entries:
                names.update(entry.provider.models)
                names.update(entry.provider.model_aliases)
            self._listed = frozenset(names)
        return self._listed

    def chain_of(self, requested: str) -> list[str]:
        """The resolved model, then its fallback chain, each resolved, without repeats."""
        return self._chain_from(self.resolve_alias(requested))

    def alias_chain(self, alias: str) -> list[str]:
        """:meth:`chain_of` for a configured alias key, whether a name or a pattern."""
        return self._chain_from(self.alias_target(alias))

    def _chain_from(
        self, model: str, fallbacks: Mapping[str, Sequence[str]] | None = None
    ) -> list[str]:
        chain: list[str] = []
        for name in [model, *(self.fallbacks if fallbacks is None else fallbacks).get(model, [])]:
            resolved = self.resolve_alias(name)
            if resolved not in chain:
                chain.append(resolved)
        return chain

    def models_changed(self) -> None:
        """Entries' model lists changed (discovery): forget which names were served,
        and so which names patterns capture."""
        self._chains.clear()
        self._serving.clear()
        self._resolved.clear()
        self._listed = None

    def model_chain(self, requested: str, needs: frozenset[Capability] = frozenset()) -> list[str]:
        """:meth:`chain_of` ``requested``, checked.

        Raises :class:`ModelNotSupportedError` listing what the router can serve when no
        configured entry (working or not) serves any model of the chain, and
        :class:`CapabilityNotSupportedError` when entries serve it but none can do
        what the request ``needs``.
        """
        chain = self._chains.get(requested)
        if chain is not None and not needs:
            return chain  # known to be served: the common case costs one lookup
        chain = self._checked(requested, self.chain_of(requested), needs)
        if len(self._chains) >= _CHAIN_CACHE_SIZE:
            self._chains.clear()  # bounded: callers choose the names
        self._chains[requested] = chain
        return chain

    def embedding_chain(self, requested: str, fallbacks: Mapping[str, Sequence[str]]) -> list[str]:
        """The resolved model, then its ``embedding_fallbacks`` (never the chat
        fallbacks: vectors of different models do not mix unless a user says so),
        checked as :meth:`model_chain` checks, for the ``embeddings`` capability."""
        chain = self._chain_from(self.resolve_alias(requested), fallbacks)
        return self._checked(requested, chain, frozenset({"embeddings"}))

    def _checked(self, requested: str, chain: list[str], needs: frozenset[Capability]) -> list[str]:
        serving = [entry.provider for name in chain for entry, _ in self.serving(name)]
        if not serving:
            raise ModelNotSupportedError(requested, supported=self.known_models())
        if needs and all(provider.lacks(needs) for provider in serving):
            missing = sorted({need for provider in serving for need in provider.lacks(needs)})
            raise CapabilityNotSupportedError(missing, model=requested)
        return chain

    def candidates(
        self,
        model: str,
        state: RoutingState,
        order: Order = "priority",
        needs: frozenset[Capability] = frozenset(),
        balance: Balance | None = None,
    ) -> tuple[list[Candidate], list[str]]:
        """Entries that can serve ``model`` now, in order, and why the others cannot.

        ``order``: ``priority`` (configured), ``latency`` (lowest time to first chunk
        first) or ``adaptive`` (lowest expected time to a complete answer, failures
        counted), from the figures of every process sharing ``state``; configured
        priority breaks ties, and unmeasured entries come first so that they get
        measured. ``balance`` reorders entries of equal priority (with ``priority``
        order): ``weighted`` at random by weight, ``least_busy`` by requests in flight
        per weight, ``latency`` by time to first chunk.
        """
        chosen: list[Candidate] = []
        excluded: list[str] = []
        for entry, upstream_model in self.serving(model):
            reason = unusable(entry, state, needs)
            if reason is None:
                chosen.append(Candidate(entry, model, upstream_model, entry.name))
            else:
                excluded.append(f"{entry.name} ({model}): {reason}")
        if len(chosen) < 2:
            return chosen, excluded
        if order == "latency":
            chosen.sort(key=lambda candidate: state.load(candidate.name).latency_ms)
        elif order == "adaptive":
            chosen.sort(key=lambda candidate: state.load(candidate.name).expected_ms)
        elif balance is not None:
            chosen.sort(key=_balance_key(balance, state))
        return chosen, excluded

    def serving(self, model: str) -> list[tuple[Entry, str]]:
        """The entries that serve ``model``, in order, each with the upstream's name for
        it (resolved once per model name, until the entries' model lists change)."""
        serving = self._serving.get(model)
        if serving is None:
            serving = [
                (entry, entry.provider.get_model(model))
                for entry in self.entries
                if entry.provider.serves(model)
            ]
            if len(self._serving) >= _CHAIN_CACHE_SIZE:
                self._serving.clear()  # bounded: callers choose the names
            self._serving[model] = serving
        return serving

    def known_models(self) -> list[str]:
        """Every name the router can route: models, provider aliases, router aliases, chains.

        Alias patterns are not names, so they are left out: a name one of them captures
        is routed all the same."""
        names: set[str] = set(self._exact) | set(self.fallbacks)
        for entry in self.entries:
            names.update(entry.provider.models)
            names.update(entry.provider.model_aliases)
        return sorted(names)


def _balance_key(balance: Balance, state: RoutingState) -> Callable[[Candidate], tuple[int, float]]:
    """Sort key: priority first, then the balance's figure (lower goes first)."""
    if balance == "weighted":
        # Weighted random order without replacement (Efraimidis-Spirakis): the entry
        # with the largest random()**(1/weight) goes first.
        return lambda c: (c.entry.priority, -(random.random() ** (1 / c.entry.weight)))
    if balance == "least_busy":
        return lambda c: (c.entry.priority, state.load(c.name).in_flight / c.entry.weight)
    return lambda c: (c.entry.priority, state.load(c.name).latency_ms)


def unusable(
    entry: Entry, state: RoutingState, needs: frozenset[Capability] = frozenset()
) -> str | None:
    """Why ``entry`` cannot serve a request that ``needs`` these capabilities now, or
    ``None`` when it can: the one rule candidates, the gateway's readiness and the
    CLI's tables share."""
    provider = entry.provider
    if entry.missing_key:
        return f"no key: {entry.missing_key} is not set"
    if not provider.working:
        return "not working"
    if not provider.supports_stream and "embeddings" not in needs:
        return "cannot stream"
    if needs and (missing := provider.lacks(needs)):
        return "; ".join(CAPABILITY_LABELS[need] for need in missing)
    if state.state(entry.name) == "open":
        return describe(state, entry.name)
    return None
