"""What an answer cost: prices per million tokens, and the cost of each attempt.

Prices come from ``genai-prices`` (its snapshot bundled in the package, never fetched
at run time), looked up once per entry and model, or from an entry's ``price``. Usage
is read as polyroute's :class:`Usage` holds it, whatever the upstream's format:
``prompt_tokens`` counts every input token, cache reads and writes included (OpenAI's
meaning, to which the Anthropic parser adds its separate counts), and
``completion_tokens`` counts reasoning. So uncached input is priced at ``input``,
cache reads at ``cache_read``, cache writes at ``cache_write``, the rest of the output
at ``output`` and its reasoning share at ``reasoning`` (each falling back to ``input``
or ``output`` when not given).

An attempt cut before its upstream reported its usage is estimated: the prompt as the
router estimates it for token limits (:func:`estimated_input_tokens`) and the text it
delivered at :data:`CHARS_PER_OUTPUT_TOKEN` characters a token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal

from polyroute.core.attempts import Attempt
from polyroute.core.deltas import Usage

CostStatus = Literal["exact", "estimated", "unpriced"]
CHARS_PER_OUTPUT_TOKEN = 4
"""Characters a token of delivered text is taken for, when its count is estimated."""
_PER_TOKEN = 1e-6  # prices are per million tokens


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens. ``cache_read`` and ``cache_write`` default to
    ``input``, ``reasoning`` to ``output``. ``tiers``: from ``(start, price)`` on, a
    request with more than ``start`` input tokens is priced wholly at ``price`` (the
    providers' long-context "cliff")."""

    input: float
    output: float = 0.0
    cache_read: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None
    tiers: tuple[tuple[int, Price], ...] = ()

    def cost(self, usage: Usage) -> float:
        """USD for ``usage`` (see the module for how each count is priced)."""
        details = usage.details
        if not details:  # nothing cached, written or reasoned (Usage reads them from here)
            return self.cost_of(usage.prompt_tokens, usage.completion_tokens)
        return self.cost_of(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cache_read_tokens,
            usage.cache_write_tokens,
            usage.reasoning_tokens,
        )

    def cost_of(
        self, prompt: int, completion: int, cached: int = 0, written: int = 0, reasoning: int = 0
    ) -> float:
        """USD for these counts, as :class:`Usage` keeps them: ``cached`` and ``written``
        within ``prompt``, ``reasoning`` within ``completion``."""
        price = self
        for start, tier in self.tiers:
            if prompt > start:
                price = tier
        reasoning = min(reasoning, completion)
        # Summed in this order whatever is 0 (adding 0.0 changes no float): the same
        # USD to the last digit as before the zero terms were skipped.
        total = max(prompt - cached - written, 0) * price.input
        if cached:
            total += cached * _or(price.cache_read, price.input)
        if written:
            total += written * _or(price.cache_write, price.input)
        total += (completion - reasoning) * price.output
        if reasoning:
            total += reasoning * _or(price.reasoning, price.output)
        return total * _PER_TOKEN


@dataclass(frozen=True, slots=True)
class Cost:
    """What something cost: ``usd`` (``None`` when unpriced) and how sure that is."""

    usd: float | None
    status: CostStatus

    @classmethod
    def of_attempts(cls, costs: Iterable[Cost]) -> Cost:
        """The sum of several attempts' costs: ``unpriced`` when any is, ``estimated``
        when any is; nothing at all costs an exact 0."""
        usd = 0.0
        status: CostStatus = "exact"
        for cost in costs:
            if cost.usd is None:
                return cls(None, "unpriced")
            usd += cost.usd
            if cost.status == "estimated":
                status = "estimated"
        return cls(round(usd, 10), status)


FREE = Cost(0.0, "exact")


def attempt_cost(
    attempt: Attempt, price: Price | None, estimate_input: Callable[[], int]
) -> Cost | None:
    """``attempt``'s cost at ``price``; ``None`` when it produced nothing (failed before
    its first byte: nothing to bill). Exact from the usage its upstream reported at the
    end of a served answer, else estimated (see the module)."""
    usage = attempt.usage
    if usage is None and not attempt.chars and attempt.ttft_ms is None:
        return None
    if price is None:
        return Cost(None, "unpriced")
    if usage is not None and attempt.outcome == "ok":
        return Cost(price.cost(usage), "exact")
    delivered = math.ceil(attempt.chars / CHARS_PER_OUTPUT_TOKEN)
    if usage is None:  # cut before its upstream counted anything
        return Cost(price.cost_of(estimate_input(), delivered), "estimated")
    estimated = Usage(
        prompt_tokens=usage.prompt_tokens or estimate_input(),
        completion_tokens=max(usage.completion_tokens, delivered),
        details=usage.details,
    )
    return Cost(price.cost(estimated), "estimated")


def load_catalogue() -> None:
    """Import genai-prices and load its snapshot (about 0.2 s, blocking): once, before
    the first answer is costed, so that no request waits for it."""
    from genai_prices import data_snapshot

    data_snapshot.get_snapshot()


def catalogue_price(model: str, *, base_url: str | None, provider: str) -> Price | None:
    """``model``'s price in genai-prices' bundled snapshot, as of this hour: at the
    provider ``base_url`` points at, else at the one the model's name suggests, else at
    ``provider`` (the entry type's own API); ``None`` when none of them lists it."""
    # The hour as a number: building a datetime for every request's lookup cost more
    # than the lookup (this runs once per attempt costed).
    return _catalogue_price(model, base_url, provider, int(time.time() // 3600))


@lru_cache(maxsize=1024)
def _catalogue_price(model: str, base_url: str | None, provider: str, hour: int) -> Price | None:
    from genai_prices import data_snapshot  # loads the snapshot: only when asked

    snapshot = data_snapshot.get_snapshot()
    lookups: list[tuple[str | None, str | None]] = [(None, None), (provider, None)]
    if base_url:
        lookups.insert(0, (None, base_url))
    for provider_id, url in lookups:
        try:
            _provider, info = snapshot.find_provider_model(model, None, provider_id, url)
        except LookupError:
            continue
        return _price_of(info.get_prices(datetime.fromtimestamp(hour * 3600, UTC)))
    return None


def _price_of(prices: Any) -> Price:
    """A genai-prices ``ModelPrice`` (per-field Decimals or tiered prices) as a Price."""
    fields = {
        "input": "input_mtok",
        "output": "output_mtok",
        "cache_read": "cache_read_mtok",
        "cache_write": "cache_write_mtok",
    }
    values = {name: getattr(prices, key, None) for name, key in fields.items()}
    starts = sorted({tier.start for value in values.values() for tier in _tiers(value)})

    def at(start: int | None) -> Price:
        chosen = {name: _rate(value, start) for name, value in values.items()}
        return Price(
            input=chosen["input"] or 0.0,
            output=chosen["output"] or 0.0,
            cache_read=chosen["cache_read"],
            cache_write=chosen["cache_write"],
        )

    base = at(None)
    tiers = tuple((start, at(start)) for start in starts)
    return Price(base.input, base.output, base.cache_read, base.cache_write, tiers=tiers)


def _tiers(value: Any) -> list[Any]:
    return list(getattr(value, "tiers", None) or [])


def _rate(value: Any, start: int | None) -> float | None:
    """The per-million price of one field at the tier from ``start`` (base: ``None``)."""
    if value is None:
        return None
    if isinstance(value, Decimal | int | float):
        return float(value)
    rate = value.base
    for tier in _tiers(value):
        if start is not None and tier.start <= start:
            rate = tier.price
    return float(rate)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
