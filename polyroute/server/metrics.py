"""The gateway's Prometheus metrics, in a registry of its own (one per gateway, so
that two gateways in one process, as in tests, do not collide)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from polyroute.core.attempts import Attempt
from polyroute.core.errors import GatewayOverloaded
from polyroute.core.pricing import Cost
from polyroute.server.governance import GovernanceFigures

if TYPE_CHECKING:
    from polyroute.server.admission import Saturation

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    """Counters updated once per request (never per chunk), gauges read at scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "polyroute_requests",
            "Requests by endpoint (chat, messages, responses), model and outcome",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "polyroute_attempts",
            "Upstream attempts by provider entry and outcome",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "polyroute_time_to_first_token_seconds",
            "Time to the first chunk of the answer",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "polyroute_in_flight_requests", "Requests being answered", registry=self.registry
        )
        self.circuit_open = Gauge(
            "polyroute_circuit_open",
            "1 while a provider entry is cooling down",
            ["provider"],
            registry=self.registry,
        )
        self.state_degraded = Gauge(
            "polyroute_state_degraded",
            "1 while the shared state (Redis) is unreachable and this process decides alone",
            registry=self.registry,
        )
        self.state_decisions = Gauge(
            "polyroute_state_decisions",
            "Decisions that needed the shared state since start, by where they were taken",
            ["where"],
            registry=self.registry,
        )
        self.relays = Counter(
            "polyroute_relays",
            "Answers handed to another provider mid-stream",
            registry=self.registry,
        )
        self.tokens = Counter(
            "polyroute_tokens",
            "Tokens upstreams reported, by kind (input, cached_input, output, reasoning)",
            ["kind", "model", "provider", "key"],
            registry=self.registry,
        )
        self.cached_input = Counter(
            "polyroute_cached_input_tokens",
            "Input tokens upstreams read from their prompt cache, by provider entry "
            "(what affinity routing is for: docs/router.md#affinity)",
            ["provider"],
            registry=self.registry,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Counter] = {}
        self._pending: dict[tuple[Counter, tuple[str, ...]], float] = {}
        """(counter, labels) -> what requests added since the last scrape."""
        self.cost = Counter(
            "polyroute_cost_usd",
            "What answers cost, in USD, by the attempt's model and entry (priced ones)",
            ["model", "provider", "key"],
            registry=self.registry,
        )
        self.ledger_dropped = Counter(
            "polyroute_ledger_dropped",
            "Spend rows that never reached the store (queue full, refused, lost at exit)",
            registry=self.registry,
        )
        self.ledger_queued = Gauge(
            "polyroute_ledger_queued",
            "Spend rows waiting for the store",
            registry=self.registry,
        )
        self.log_dropped = Counter(
            "polyroute_log_dropped",
            "Request log records that never reached the store (queue full, refused, lost)",
            registry=self.registry,
        )
        self.log_queued = Gauge(
            "polyroute_log_queued",
            "Request log records waiting for the store",
            registry=self.registry,
        )
        self.store_unavailable = Gauge(
            "polyroute_store_unavailable",
            "1 while the store cannot be read: the keys known go on working",
            registry=self.registry,
        )
        self.key_refreshes_failed = Counter(
            "polyroute_key_refreshes_failed",
            "Reads of the store's key changes that failed (down, or slower than 5 s)",
            registry=self.registry,
        )
        self.runtime_keys = Gauge(
            "polyroute_runtime_keys",
            "Keys from the store this process knows (revoked ones left out)",
            registry=self.registry,
        )
        self.budget_remaining = Gauge(
            "polyroute_budget_remaining_usd",
            "USD left in the current period of a budget requests were held to, as this "
            "process last heard (reservations in flight not counted)",
            ["scope"],
            registry=self.registry,
        )
        # The gateway's own load and trouble, apart from the upstreams' (docs/gateway.md
        # #limits-and-overload).
        self.requests_shed = Counter(
            "polyroute_requests_shed",
            "Requests refused at once with 503, before any work: reason in_flight "
            "(gateway.max_in_flight), loop_lag (gateway.max_loop_lag_ms) or draining",
            ["endpoint", "reason"],
            registry=self.registry,
        )
        self.gateway_overloaded = Counter(
            "polyroute_gateway_overloaded",
            "Attempts the gateway itself failed (no file descriptor, no connection slot, "
            "its loop too far behind), never counted against an entry, by cause",
            ["cause"],
            registry=self.registry,
        )
        self.client_connections = Gauge(
            "polyroute_client_connections",
            "Client connections open now",
            registry=self.registry,
        )
        self.max_in_flight = Gauge(
            "polyroute_max_in_flight",
            "Requests served at once before new ones are refused (0: no cap)",
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "polyroute_connections_refused",
            "Client connections refused at once: gateway.max_connections were open",
            registry=self.registry,
        )
        self.client_timeouts = Counter(
            "polyroute_client_timeouts",
            "Requests given up because the client was too slow, by what was late "
            "(headers: gateway.header_timeout_s; the body's 408s are in polyroute_requests)",
            ["phase"],
            registry=self.registry,
        )
        self.loop_lag = Gauge(
            "polyroute_event_loop_lag_seconds",
            "How late the event loop ran its timers, worst of the last second",
            registry=self.registry,
        )
        self._counted = {"dropped": 0, "failed": 0, "log_dropped": 0}
        """The counters' values already exposed: a scrape adds what grew since."""
        # Each label set's child, kept: labels() takes a lock and checks its arguments
        # on every call, a measurable share of a short request's CPU.
        self._requests: dict[tuple[str, str, str], Counter] = {}
        self._attempts: dict[tuple[str, str], Counter] = {}
        self._shed: dict[tuple[str, str], Counter] = {}

    def record(
        self,
        endpoint: str,
        model: str,
        status: str,
        attempts: list[Attempt],
        *,
        ttft_ms: float | None = None,
        relays: int = 0,
    ) -> None:
        """One finished request: its outcome, its attempts, the time to its first chunk
        (streams only) and its relays."""
        labels = (endpoint, model, status)
        if (requests := self._requests.get(labels)) is None:
            requests = self._requests[labels] = self.requests.labels(*labels)
        requests.inc()
        for attempt in attempts:
            pair = (attempt.provider, attempt.outcome)
            if (tried := self._attempts.get(pair)) is None:
                tried = self._attempts[pair] = self.attempts.labels(*pair)
            tried.inc()
            if isinstance(own := attempt.error, GatewayOverloaded):
                self.gateway_overloaded.labels(own.cause).inc()
        if ttft_ms is not None:
            self.ttft.observe(ttft_ms / 1000)
        if relays:
            self.relays.inc(relays)

    def record_spend(self, key: str | None, spent: list[tuple[Attempt, Cost | None]]) -> None:
        """What one request's attempts used and cost (``key``: the key's name): added up
        here, in the counters at the next scrape (:meth:`exposition`)."""
        named = key or ""
        for attempt, cost in spent:
            labels = (attempt.model, attempt.provider, named)
            if (usage := attempt.usage) is not None:
                cached, reasoning = usage.cache_read_tokens, usage.reasoning_tokens
                if cached > 0:
                    self._add(self.cached_input, (attempt.provider,), cached)
                for kind, count in (
                    ("input", usage.prompt_tokens - cached),
                    ("cached_input", cached),
                    ("output", usage.completion_tokens - reasoning),
                    ("reasoning", reasoning),
                ):
                    if count > 0:
                        self._add(self.tokens, (kind, *labels), count)
            if cost is not None and cost.usd:
                self._add(self.cost, labels, cost.usd)

    def _add(self, metric: Counter, labels: tuple[str, ...], amount: float) -> None:
        # A sum in a dictionary: a prometheus-client counter takes a lock and checks its
        # amount at every inc() (about 1 us each, up to six a request).
        pending = self._pending
        pending[metric, labels] = pending.get((metric, labels), 0) + amount

    def _apply_pending(self) -> None:
        """Add what requests counted since the last scrape to the counters."""
        pending, self._pending = self._pending, {}
        for (metric, labels), amount in pending.items():
            self._child(metric, labels).inc(amount)

    def _child(self, metric: Counter, labels: tuple[str, ...]) -> Counter:
        """``metric.labels(*labels)``, kept: prometheus-client checks and locks at every
        ``labels()`` call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_governance(self, figures: GovernanceFigures) -> None:
        """The store's, the ledger's, the request log's and the budgets' figures as of now."""
        counted = self._counted
        self.ledger_dropped.inc(max(0, figures.ledger_dropped - counted["dropped"]))
        self.key_refreshes_failed.inc(max(0, figures.key_refresh_failures - counted["failed"]))
        self.log_dropped.inc(max(0, figures.log_dropped - counted["log_dropped"]))
        counted["dropped"] = figures.ledger_dropped
        counted["failed"] = figures.key_refresh_failures
        counted["log_dropped"] = figures.log_dropped
        self.ledger_queued.set(figures.ledger_queued)
        self.log_queued.set(figures.log_queued)
        self.store_unavailable.set(1 if figures.store_unavailable else 0)
        self.runtime_keys.set(figures.runtime_keys)
        for scope, usd in figures.budget_remaining.items():
            self.budget_remaining.labels(scope=scope).set(usd)

    def shed(self, endpoint: str, reason: str) -> None:
        """A request refused at the front door (cheaply: a flood of them is the case)."""
        labels = (endpoint, reason)
        if (shed := self._shed.get(labels)) is None:
            shed = self._shed[labels] = self.requests_shed.labels(*labels)
        shed.inc()

    def observe_gateway(self, load: Saturation) -> None:
        """The gateway's own load as of now."""
        counted = self._counted
        self.client_connections.set(load.connections)
        self.max_in_flight.set(load.max_in_flight or 0)
        self.loop_lag.set(load.loop_lag_ms / 1000)
        self.connections_refused.inc(max(0, load.refused_connections - counted.get("refused", 0)))
        grown = load.header_timeouts - counted.get("headers", 0)
        if grown > 0:
            self.client_timeouts.labels("headers").inc(grown)
        counted["refused"] = load.refused_connections
        counted["headers"] = load.header_timeouts

    def exposition(
        self, in_flight: int, circuits: dict[str, bool], degraded: bool, decisions: dict[str, int]
    ) -> bytes:
        """The text exposition, with the requests in flight, the entries' circuits (open
        or not) and the shared state's figures as of now."""
        self.in_flight.set(in_flight)
        for name, cooling_down in circuits.items():
            self.circuit_open.labels(provider=name).set(1 if cooling_down else 0)
        self.state_degraded.set(1 if degraded else 0)
        for where, count in decisions.items():
            self.state_decisions.labels(where=where).set(count)
        self._apply_pending()
        return generate_latest(self.registry)
