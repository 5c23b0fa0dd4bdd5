"""The gateway's front door: serve a new request now, or refuse it at once.

A gateway past what its core can serve does not fail loudly: every stream slows down
together until the first-chunk timeouts fire for all of them (measured:
docs/performance.md#overload). So a request beyond ``gateway.max_in_flight`` requests
at once, or (optionally) while the event loop lags more than
``gateway.max_loop_lag_ms``, or once the gateway drains, gets a 503 with
``Retry-After`` before anything else is done for it: no key lookup, no body read, no
upstream call. The requests admitted keep their pace; the refused ones are counted
(``polyroute_requests_shed_total``) and retried by their clients, elsewhere or later.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from polyroute.core.logging import get_logger
from polyroute.core.overload import LoopLag
from polyroute.router.config import GatewayConfig
from polyroute.server.connections import ConnectionGuard
from polyroute.server.dialects import Dialect
from polyroute.server.dialects.errors import WireError
from polyroute.server.limits import max_in_flight
from polyroute.server.responses import error_response

_log = get_logger()
RETRY_AFTER_S = 1.0
"""What a refusal asks clients to wait: long enough for the requests in flight to move
on (most last seconds), short enough not to lose the client."""
_CODES = {"draining": "gateway_stopping"}


@dataclass(frozen=True, slots=True)
class Saturation:
    """The gateway's own load, apart from its entries' (``/readyz``, ``/metrics``)."""

    saturated: bool
    """New requests or connections are being refused now (or would be)."""
    draining: bool
    in_flight: int
    max_in_flight: int | None
    connections: int
    max_connections: int
    loop_lag_ms: float
    refused_connections: int
    header_timeouts: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Admission:
    """Decides, per request, from the gateway settings in service, the requests in
    flight and the event loop's lag (``lag``); ``files`` is the process's file limit,
    from which the default ``max_in_flight`` is derived."""

    def __init__(self, lag: LoopLag, files: int | None) -> None:
        self.lag = lag
        self.files = files
        self.draining = False
        """Set when the gateway begins to stop: every new request is refused."""
        self._said = 0.0
        self._unsaid = 0

    def cap(self, config: GatewayConfig) -> int | None:
        """The requests served at once (``None``: no cap)."""
        return max_in_flight(config, self.files)

    def refuses(self, config: GatewayConfig, in_flight: int) -> str | None:
        """Why a new request is refused now (``draining``, ``in_flight``,
        ``loop_lag``), or ``None``: it is served."""
        if self.draining:
            return "draining"
        cap = max_in_flight(config, self.files)
        if cap is not None and in_flight >= cap:
            return "in_flight"
        limit = config.max_loop_lag_ms
        if limit is not None and self.lag.recent_ms() > limit:
            return "loop_lag"
        return None

    def refusal(
        self, config: GatewayConfig, dialect: Dialect, reason: str, request_id: str
    ) -> web.Response:
        """The 503 of a request refused for ``reason``, in ``dialect``'s shape, with
        ``Retry-After`` (and ``Connection: close`` while draining: the connection
        has no future here)."""
        if reason == "draining":
            message = "the gateway is stopping: retry, another instance will answer"
        elif reason == "in_flight":
            message = (
                f"the gateway is serving {self.cap(config)} requests at once, its limit "
                "(gateway.max_in_flight): retry shortly"
            )
        else:
            message = (
                f"the gateway's event loop lags more than {config.max_loop_lag_ms} ms "
                "(gateway.max_loop_lag_ms): retry shortly"
            )
        refusal = dialect.refusal(503, message, _CODES.get(reason, "gateway_busy"))
        error = WireError(refusal.status, refusal.body, RETRY_AFTER_S, refusal.code)
        response = error_response(error, request_id)
        if reason == "draining":
            response.force_close()
        self._note(reason)
        return response

    def saturation(
        self, config: GatewayConfig, in_flight: int, guard: ConnectionGuard
    ) -> Saturation:
        """The load now: requests, connections and the loop's lag against their limits."""
        cap = self.cap(config)
        lag = self.lag.recent_ms()
        full = cap is not None and in_flight >= cap
        lagging = config.max_loop_lag_ms is not None and lag > config.max_loop_lag_ms
        return Saturation(
            saturated=full or lagging or guard.is_full or self.draining,
            draining=self.draining,
            in_flight=in_flight,
            max_in_flight=cap,
            connections=guard.open,
            max_connections=guard.limits.max_connections,
            loop_lag_ms=round(lag, 1),
            refused_connections=guard.refused,
            header_timeouts=guard.timed_out["headers"],
        )

    def _note(self, reason: str) -> None:
        """One ``gateway.shed`` event a second at most, counting the refusals since
        the last: a flood of refusals must cost no more than the refusals."""
        self._unsaid += 1
        now = time.monotonic()
        if now - self._said >= 1.0:
            _log.info("gateway.shed", reason=reason, refused=self._unsaid)
            self._said, self._unsaid = now, 0
