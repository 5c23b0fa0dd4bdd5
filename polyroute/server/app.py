"""The gateway: an aiohttp application that speaks three client dialects in front of a
:class:`Router`: OpenAI's chat completions (``/v1/chat/completions``), Anthropic's
Messages (``/v1/messages``) and OpenAI's Responses (``/v1/responses``).

Every dialect goes through one pipeline (:meth:`Gateway._serve`): keys, body, the
router, then a whole answer or a stream. A streamed answer starts only once the router
has its first chunk, so that a request no provider could serve gets a real HTTP status
(404, 502, 504, 529) rather than a 200 whose stream fails. After that, a failure the
router cannot relay ends the stream with the dialect's error event and never with its
clean end: never a cut answer that looks complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from polyroute.core.attempts import Attempt
from polyroute.core.deltas import Delta, Usage
from polyroute.core.embeddings import Embeddings
from polyroute.core.errors import (
    ConfigError,
    InvalidRequestError,
    ModelNotSupportedError,
    PolyrouteError,
    RequestTimeoutError,
    clipped,
)
from polyroute.core.logging import get_logger, new_request_id
from polyroute.core.overload import LOOP_LAG
from polyroute.core.pricing import FREE, Cost
from polyroute.router.config import GatewayConfig
from polyroute.router.observe import RequestLabels, RequestRecord, build_record
from polyroute.router.router import Router
from polyroute.router.state import Denied, Lease
from polyroute.router.stream import RouterStream
from polyroute.server.admission import Admission
from polyroute.server.connections import ConnectionGuard, tracked
from polyroute.server.console import Console, harden
from polyroute.server.dialects import Dialect, Exchange
from polyroute.server.dialects.chat import ChatDialect, polyroute_facts
from polyroute.server.dialects.embeddings import embeddings_body, read_embeddings_body
from polyroute.server.dialects.errors import WireError
from polyroute.server.dialects.messages import MessagesDialect
from polyroute.server.dialects.responses import ResponsesDialect
from polyroute.server.governance import Governance, Spent
from polyroute.server.headers import authorization_problem, bad_header
from polyroute.server.keys import ClientKey, KeyRing, presented_key
from polyroute.server.limits import file_limit, limits_for, somaxconn
from polyroute.server.memory import MemoryReturn
from polyroute.server.metrics import GatewayMetrics
from polyroute.server.reload import ConfigReloader, Generation, ReloadSummary, Retirements
from polyroute.server.responses import error_response, json_response, request_id_of
from polyroute.server.store_keys import TOPIC
from polyroute.store import LogsConfig, Store
from polyroute.telemetry.observer import Tracing

_log = get_logger()
_Answer = Callable[[web.Request, Dialect, str, "_Outcome"], Awaitable[web.StreamResponse]]
_Batches = AsyncGenerator[list[Delta], None]
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_CACHE_MODES = ("use", "refresh", "off")
_BUDGET_HEADER = "x-polyroute-budget-remaining-usd"
_KEY_REQUIRED = "a valid gateway key is required (Authorization: Bearer ..., or x-api-key)"
_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "messages",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
}
"""The ``endpoint`` label of each path served by :meth:`Gateway._serve`."""


@dataclass(slots=True)
class _Outcome:
    """What the access log and the metrics say of one request, and the configuration it
    is served on."""

    endpoint: str
    generation: Generation
    model: str = ""
    key: ClientKey | None = None
    status: str = "cancelled"
    """The HTTP status; ``stream_error`` for a stream that ended with an error event;
    ``cancelled`` when the client went away first."""
    stream: RouterStream | None = None
    embeddings: Embeddings | None = None
    messages: Any = None
    ledger_id: str = ""
    """The request's id in the spend ledger (unique even when the client reuses one)."""
    leases: list[Lease] = field(default_factory=list)
    """Its places under its key's and team's ``tpm``, ended with the tokens it used."""
    routed: bool = False
    """Handed to the router, which records it; else the gateway records its refusal."""
    refusal: tuple[str, str] | None = None
    """The error code and message of a refusal before routing, for its record."""
    traceparent: str | None = None
    """The client's W3C ``traceparent``: its trace goes on through the router."""

    @property
    def attempts(self) -> list[Attempt]:
        served = self.stream or self.embeddings
        return served.attempts if served is not None else []

    @property
    def provider(self) -> str | None:
        served = self.stream or self.embeddings
        return served.provider if served is not None else None

    @property
    def usage(self) -> Usage | None:
        served = self.stream or self.embeddings
        return served.usage if served is not None else None

    @property
    def ttft_ms(self) -> float | None:
        return next((a.ttft_ms for a in self.attempts if a.ttft_ms is not None), None)

    def spent(self) -> list[tuple[Attempt, Cost | None]]:
        """Each attempt, and what it cost (embeddings: the serving attempt is the one
        that produced anything)."""
        if self.stream is not None:
            return list(zip(self.stream.attempts, self.stream.attempt_costs(), strict=True))
        if self.embeddings is not None and self.embeddings.attempts:
            served = self.embeddings.attempts[-1]
            return [(served, self.embeddings.cost)]
        return []


class Gateway:
    """Serves ``router`` over HTTP; ``app()`` is the aiohttp application. With a
    ``store`` (not yet started), its keys work beside the config's, every served request
    goes to its spend ledger, and the admin API has keys, teams and spend
    (:meth:`start` and :meth:`aclose` run them). With a ``reloader``, :meth:`reload`
    replaces the router, settings and keys in service (:attr:`generation`) from the
    config file, without a restart.

    Raises :class:`ConfigError` when a gateway key's environment variable, or the admin
    key's, is not set.
    """

    def __init__(
        self,
        router: Router,
        config: GatewayConfig | None = None,
        store: Store | None = None,
        *,
        reloader: ConfigReloader | None = None,
        logs: LogsConfig | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        config = config or GatewayConfig()
        self.governance = Governance(config, store, logs=logs)
        self.tracing = tracing
        """OpenTelemetry (``telemetry:``): told of every request, refusals included."""
        keys = KeyRing(
            config.keys, config.teams, config.budget_hold_s, runtime=self.governance.keys
        )
        self.generation = Generation(router, config, keys)
        """The configuration in service: a request keeps the one it started on."""
        self.reloader = reloader
        self.admin = self.governance.admin_api(
            lambda: self.generation.keys,
            lambda: self.router.announce(TOPIC),
            self.reload if reloader is not None else None,
        )
        self.console: Console | None = None
        """The console's page and live figures (docs/console.md): with the admin API."""
        if self.admin is not None:
            self.console = Console(self.admin, lambda: self.router, lambda: len(self._in_flight))
        self.metrics = GatewayMetrics()
        self.chat: Dialect = ChatDialect()
        self.messages: Dialect = MessagesDialect()
        self.responses = ResponsesDialect(
            router.records, store=config.responses_store, ttl_s=config.responses_ttl_s
        )
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._reloading = asyncio.Lock()
        self._retirements = Retirements()
        self._max_body_bytes = config.max_body_bytes
        files = file_limit()
        self.limits = limits_for(config, files, somaxconn())
        """The connection limits, read once (docs/gateway.md#limits-and-overload)."""
        self.admission = Admission(LOOP_LAG, files)
        self.connections = ConnectionGuard(self.limits, config.header_timeout_s, self._shaped)
        self.memory = MemoryReturn()
        self._endpoints: list[str] = []
        """What the application serves (``POST /v1/chat/completions``...), told with a 404."""
        if config.protect_metrics and not keys and self.governance.admin_key is None:
            raise ConfigError(
                "gateway.protect_metrics: no key could open /metrics and /readyz: configure "
                "gateway.keys, a store: or gateway.admin_key_env"
            )

    @property
    def router(self) -> Router:
        """The router of the configuration in service."""
        return self.generation.router

    @property
    def config(self) -> GatewayConfig:
        """The gateway settings in service."""
        return self.generation.config

    @property
    def keys(self) -> KeyRing:
        """The keys in service: the config file's, and the store's."""
        return self.generation.keys

    async def start(self) -> None:
        """Load the store's keys and start the ledger (nothing without a store); trace
        the router's requests (with ``tracing``)."""
        if self.tracing is not None:
            self.router.observe(self.tracing)
        LOOP_LAG.start()
        await self.governance.start(self.router)

    async def reload(self) -> ReloadSummary:
        """Re-read the config file and serve it from now on (docs/gateway.md#reload):
        requests in flight finish on the configuration they started with. Raises
        :class:`ConfigError` (the running configuration stays) when the file does not
        load, or when the gateway was not made with a ``reloader``. One at a time."""
        if self.reloader is None:
            raise ConfigError("this gateway has no config file to re-read")
        async with self._reloading:
            prepared = await self.reloader.prepare(self.generation, self.governance.keys)
            if prepared.generation is not None:
                self._install(prepared.generation)
            self.reloader.installed(prepared)
        return prepared.summary

    def _install(self, generation: Generation) -> None:
        """Put ``generation`` in service, in one step (nothing awaited: no request sees
        half of it); the one it replaces is retired once its requests end."""
        generation.router.take_over()
        replaced, self.generation = self.generation, generation
        self.responses.store = generation.config.responses_store
        self.responses.ttl_s = generation.config.responses_ttl_s
        self.metrics.circuit_open.clear()  # a removed entry's gauge must not linger
        self._retirements.retire(replaced, lambda: self.generation)

    async def aclose(self) -> None:
        """Once the requests are over (:meth:`drain`): close the providers only replaced
        configurations held, flush the ledger and close the store. The router in service
        is the caller's to close (it holds the routing state every configuration
        shared)."""
        LOOP_LAG.stop()
        await self._retirements.aclose()
        await self.governance.aclose()
        if self.tracing is not None:
            await self.tracing.aclose()  # exports what is left

    async def drain(self, seconds: float) -> None:
        """Refuse new requests (503, ``Connection: close`` on every answer), wait up to
        ``seconds`` for the requests in flight to finish, then cancel the rest: each
        still gets an answer, a 503 before its answer began, an error event in its
        stream (see :meth:`_serve` and :meth:`_stream`)."""
        self.admission.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), seconds)
        tasks = list(self._in_flight)
        self._stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def app(self) -> web.Application:
        # Read once: the body limit needs a restart (docs/gateway.md#reload).
        self._max_body_bytes = self.config.max_body_bytes
        middlewares = [tracked, self._as_dialect_errors, self._refuse_bad_headers]
        app = web.Application(client_max_size=self._max_body_bytes, middlewares=middlewares)
        app.on_response_prepare.append(self._prepared)
        app.router.add_post("/v1/chat/completions", self.handler(self.chat))
        app.router.add_post("/v1/messages", self.handler(self.messages))
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.handler(self.responses))
        app.router.add_get("/v1/responses/{id}", self.get_response)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_text)
        if self.admin is not None:
            self.admin.add_routes(app)
        self._endpoints = served_endpoints(app)
        if self.console is not None:
            self.console.add_routes(app)  # after: an operator's page, not a client endpoint
        return app

    def _dialect_of(self, path: str) -> Dialect:
        if path.startswith("/v1/messages"):
            return self.messages
        return self.responses if path.startswith("/v1/responses") else self.chat

    @web.middleware
    async def _as_dialect_errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """aiohttp's own refusals (413 body too large, 404, 405) as the dialect's errors."""
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as refused:
            if refused.status < 400:
                raise
            dialect = self._dialect_of(request.path)
            message = self._refused_because(request, refused)
            error = dialect.refusal(refused.status, message, _code_for(refused.status))
            return error_response(error, request_id_of(request))
        return response

    @web.middleware
    async def _refuse_bad_headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """A header value that is not ASCII: 400 (401 for a key's header), before
        anything reads it."""
        if (bad := bad_header(request.headers)) is not None:
            refusal = self._dialect_of(request.path).refusal(bad.status, bad.message, bad.code)
            if (endpoint := _ENDPOINTS.get(request.path)) is not None:
                self.metrics.record(endpoint, "", str(bad.status), [])
            return error_response(refusal, request_id_of(request))
        response: web.StreamResponse = await handler(request)
        return response

    def _shaped(self, path: str, status: int, message: str, code: str | None) -> WireError:
        """A refusal in the dialect of ``path`` (for the connections' own answers)."""
        refusal = self._dialect_of(path).refusal(status, message, code)
        if status == 503:
            return WireError(refusal.status, refusal.body, 1.0, refusal.code)
        return refusal

    async def _prepared(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer, streams and errors too: ``Server: polyroute``, rather than
        aiohttp's default, which tells the versions of Python and aiohttp; while the
        gateway drains, ``Connection: close``; with the console, its security headers
        under ``/ui`` and ``/admin``. One callback: aiohttp awaits each of them for
        every answer."""
        response.headers["Server"] = "polyroute"
        if self.admission.draining:
            response.headers["Connection"] = "close"
            response.force_close()
        if self.console is not None:
            harden(request, response)

    def _refused_because(self, request: web.Request, refused: web.HTTPException) -> str:
        """What aiohttp's refusal means here, and what to do instead."""
        asked = f"{request.method} {request.path[:200]}"
        if isinstance(refused, web.HTTPNotFound) and not request.path.startswith("/admin"):
            return f"Invalid URL ({asked}): this gateway serves {', '.join(self._endpoints)}"
        if isinstance(refused, web.HTTPMethodNotAllowed):
            allowed = sorted(refused.allowed_methods - {"HEAD"})
            return f"{refused.reason} ({asked}): use {' or '.join(allowed)}"
        if isinstance(refused, web.HTTPRequestEntityTooLarge):
            return (
                f"the request body is larger than this gateway's limit of "
                f"{self._max_body_bytes} bytes (gateway.max_body_bytes)"
            )
        return f"{refused.reason} ({asked})"

    # The pipeline, for every dialect -------------------------------------------------

    def handler(self, dialect: Dialect) -> Any:
        """The request handler of ``dialect``'s endpoint."""

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, dialect.name, self._answer, dialect)

        return handle

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/embeddings``: OpenAI's shape, routed by ``Router.embed``."""
        return await self._serve(request, "embeddings", self._embed, self.chat)

    async def _serve(
        self, request: web.Request, endpoint: str, answer: _Answer, dialect: Dialect
    ) -> web.StreamResponse:
        """``answer`` the request, counted in flight (for the drain), then accounted;
        refused at once (503) when the gateway is at its limits or stopping."""
        config = self.config
        if (shed := self.admission.refuses(config, len(self._in_flight))) is not None:
            self.metrics.shed(endpoint, shed)
            return self.admission.refusal(config, dialect, shed, request_id_of(request))
        started = time.perf_counter()
        request_id = request_id_of(request)
        outcome = _Outcome(endpoint, self.generation.enter(), ledger_id=request_id)
        outcome.traceparent = request.headers.get("traceparent")
        if request_id == request.headers.get("x-request-id"):  # the client's: maybe reused
            outcome.ledger_id = f"{request_id}/{new_request_id()}"
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
            self._idle.clear()
        try:
            response = await answer(request, dialect, request_id, outcome)
            if outcome.status == "cancelled":
                outcome.status = str(response.status)
            if not outcome.routed and response.status >= 400:
                outcome.refusal = _refusal_in(response)
            if response.status == 408:
                response.force_close()  # the rest of its body may still be on its way
            await self.memory.answered(request, response)
            return response
        except web.HTTPException as refused:  # 413 from reading the body
            outcome.status = str(refused.status)
            outcome.refusal = (f"http_{refused.status}", refused.reason)
            raise
        except asyncio.CancelledError:
            if not self._stopping:
                raise  # the client went away: nobody to tell
            return self._stopped(task, dialect, request_id, outcome)
        except ConnectionError:  # the client went away while its answer was written
            return web.Response(status=499)  # never sent: aiohttp only sees it is gone
        except Exception:
            outcome.status = "500"  # a failure of the gateway's: aiohttp answers it
            raise
        finally:
            self._in_flight.discard(task)
            if not self._in_flight:
                self._idle.set()
            outcome.generation.leave()  # first: whatever the accounting does, it is let go
            self._account(outcome, request_id, started)

    def _stopped(
        self, task: asyncio.Task[Any] | None, dialect: Dialect, request_id: str, outcome: _Outcome
    ) -> web.Response:
        """The answer of a request the drain cancelled before its answer began."""
        if task is not None:
            task.uncancel()  # answered: aiohttp goes on to send it
        outcome.status = "503"
        message = "the gateway stopped before the answer began: retry, another instance will answer"
        refusal = dialect.refusal(503, message, "gateway_stopping")
        response = error_response(WireError(503, refusal.body, 1.0, refusal.code), request_id)
        response.force_close()
        return response

    async def _answer(
        self, request: web.Request, dialect: Dialect, request_id: str, outcome: _Outcome
    ) -> web.StreamResponse:
        router = outcome.generation.router
        key = self._caller(outcome.generation, request, dialect, request_id, outcome)
        if isinstance(key, web.Response):
            return key
        try:
            body = await _json_body(request, outcome.generation.config.body_timeout_s)
            exchange = await dialect.read(body, request.headers)
        except PolyrouteError as error:
            return error_response(dialect.error(error), request_id)
        if not exchange.model and not outcome.generation.config.default_model_when_missing:
            return error_response(_missing_model(dialect), request_id)
        outcome.model = exchange.model or router.default_model or ""
        outcome.messages = exchange.messages
        if key is not None and (
            refused := await self._key_refuses(router, key, dialect, outcome.model, outcome)
        ):
            return error_response(refused, request_id)
        cache = request.headers.get("x-polyroute-cache")
        if cache is not None and cache not in _CACHE_MODES:
            message = f"x-polyroute-cache must be use, refresh or off, got {clipped(cache)!r}"
            return error_response(dialect.refusal(400, message, "invalid_request"), request_id)
        try:
            stream = router.stream(
                exchange.model,
                exchange.messages,
                request_id=request_id,
                native=exchange.native,
                cache=cache or (key.cache if key is not None else None),
                budget=key.budget if key is not None else None,
                labels=_labels(outcome),
                headers=request.headers,  # for an affinity keyed by a header
                pass_through=exchange.pass_through,
                **exchange.options,
            )
        except PolyrouteError as error:
            return _refusal(error, dialect, request_id, outcome)
        outcome.stream = stream
        outcome.routed = True
        async with stream:
            batches = stream.delta_batches()
            try:
                first: list[Delta] = await anext(batches, [])
                if not exchange.stream:
                    exchange.opening(stream, request_id)
                    exchange.collect(first)
                    async for batch in batches:
                        exchange.collect(batch)
                    body = await exchange.whole(stream, request_id)
                    return json_response(body, headers=_facts_headers(stream, request_id))
            except PolyrouteError as error:
                return error_response(dialect.error(error), request_id)
            return await self._stream(request, dialect, exchange, stream, batches, first, outcome)

    async def _embed(
        self, request: web.Request, dialect: Dialect, request_id: str, outcome: _Outcome
    ) -> web.StreamResponse:
        router = outcome.generation.router
        key = self._caller(outcome.generation, request, dialect, request_id, outcome)
        if isinstance(key, web.Response):
            return key
        try:
            body = await _json_body(request, outcome.generation.config.body_timeout_s)
            call = read_embeddings_body(body)
            if not call.model and not outcome.generation.config.default_model_when_missing:
                return error_response(_missing_model(dialect), request_id)
            outcome.model = call.model or router.default_model or ""
            if key is not None and (
                refused := await self._key_refuses(router, key, dialect, outcome.model, outcome)
            ):
                return error_response(refused, request_id)
            outcome.routed = True  # however it ends, the router records it
            embedded = await router.embed(
                call.model,
                call.inputs,
                dimensions=call.dimensions,
                encoding_format=call.encoding_format,
                request_id=request_id,
                budget=key.budget if key is not None else None,
                labels=_labels(outcome),
            )
            outcome.embeddings = embedded
            body = embeddings_body(embedded, call)  # base64 that does not decode raises
        except PolyrouteError as error:
            return _refusal(error, dialect, request_id, outcome)
        headers = {
            "x-request-id": request_id,
            "x-polyroute-provider": embedded.provider,
            "x-polyroute-model": embedded.model,
            "x-polyroute-attempts": str(len(embedded.attempts)),
            "x-polyroute-cost-usd": usd_header(embedded.cost_usd),
        }
        if embedded.budget_remaining_usd is not None:
            headers[_BUDGET_HEADER] = budget_header(embedded.budget_remaining_usd)
        return web.Response(body=body, content_type="application/json", headers=headers)

    def _caller(
        self,
        generation: Generation,
        request: web.Request,
        dialect: Dialect,
        request_id: str,
        outcome: _Outcome | None,
    ) -> ClientKey | web.Response | None:
        """The request's gateway key (``None`` without keys), or the 401 when keys are
        configured and the request carries none of them."""
        keys = generation.keys
        key = keys.find(request.headers, getattr(request.protocol, "key_memo", None))
        if keys and key is None:
            message = authorization_problem(request.headers) or _KEY_REQUIRED
            return error_response(dialect.refusal(401, message, "invalid_api_key"), request_id)
        if outcome is not None:
            outcome.key = key
        return key

    async def _key_refuses(
        self,
        router: Router,
        key: ClientKey,
        dialect: Dialect,
        model: str,
        outcome: _Outcome | None = None,
    ) -> WireError | None:
        """403 for a model the key may not use, 429 over its (or its team's) requests
        or tokens per minute. Tokens are counted only for a request that will use some
        (``outcome`` given): its places are ended in :meth:`_account`."""
        if key.models is not None and not key.allows(model, router.resolve_model(model)):
            message = f"key {key.name!r} may not use model {clipped(model)!r}"
            return dialect.refusal(403, message, "model_not_allowed")
        limits = key.limits()
        for limit in limits:
            wait = await router.admit_key(limit.counter, limit.rpm) if limit.rpm else None
            if wait is not None:
                message = f"{limit.who} is over its {limit.rpm} requests per minute"
                return _too_many(dialect, message, wait)
        if outcome is None:
            return None
        for limit in limits:
            if not limit.tpm:
                continue
            # The request's tokens are unknown until it ends: 1 now, corrected then.
            taken = await router.admit_key_tokens(limit.counter, limit.tpm, 1)
            if isinstance(taken, Denied):
                message = f"{limit.who} is over its {limit.tpm} tokens per minute"
                return _too_many(dialect, message, taken.retry_in)
            outcome.leases.append(taken)
        return None

    def _account(self, outcome: _Outcome, request_id: str, started: float) -> None:
        """One metrics update and one access-log event per request (and the record of a
        request refused before routing: the router records the others)."""
        recorded = self.governance.request_log is not None or self.tracing is not None
        if not outcome.routed and recorded:
            record = _refusal_record(outcome, request_id, started)
            self.governance.log_refusal(record)
            if self.tracing is not None:
                self.tracing.request_ended(record)
        stream = outcome.stream
        self.metrics.record(
            outcome.endpoint,
            outcome.model,
            outcome.status,
            outcome.attempts,
            ttft_ms=stream.ttft_ms if stream is not None else None,
            relays=len(stream.switches) if stream is not None else 0,
        )
        if outcome.status == "cancelled":  # routine: no traceback, the request's id
            _log.info("gateway.client_gone", request_id=request_id, endpoint=outcome.endpoint)
        client = outcome.key
        spent = outcome.spent()
        self.metrics.record_spend(client.name if client else None, spent)
        cost = (
            stream.cost
            if stream is not None
            else Cost.of_attempts(cost for _, cost in spent if cost is not None)
        )
        self._govern(outcome, cost)
        usage, ttft_ms = outcome.usage, outcome.ttft_ms
        if self.console is not None and outcome.routed:
            self.console.tally.add(
                request_id,
                # An error status, or an error event ending a stream (a cut answer).
                failed=outcome.status == "stream_error" or outcome.status[:1] in ("4", "5"),
                ttft_ms=ttft_ms,
                cost_usd=cost.usd,
                attempts=outcome.attempts,
                provider=outcome.provider,
                tokens=usage.prompt_tokens + usage.completion_tokens if usage else 0,
            )
        fields: dict[str, Any] = {
            "request_id": request_id,
            "endpoint": outcome.endpoint,
            "key": client.name if client else None,
            "model": outcome.model,
            "provider": outcome.provider,
            "status": outcome.status,
            "ttft_ms": ttft_ms,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "cost_usd": cost.usd,
            "cost_status": cost.status,
        }
        if stream is not None and (dropped := stream.dropped):
            fields["dropped"] = dropped
        log_content = client.log_content if client is not None else None
        if outcome.generation.config.log_content if log_content is None else log_content:
            fields["messages"] = outcome.messages
        _log.info("gateway.request", **fields)

    def _govern(self, outcome: _Outcome, cost: Cost) -> None:
        """Count what the request used under its ``tpm`` limits; its row for the spend
        ledger when it reached an upstream (or the response cache)."""
        if outcome.leases:
            used = Spent.of(outcome.attempts).total
            for lease in outcome.leases:
                lease.end(used)
        served = outcome.stream or outcome.embeddings
        replayed = outcome.stream is not None and outcome.stream.cache == "hit"
        if served is not None and (served.attempts or replayed):
            model = served.model or outcome.model
            provider = served.provider or ""
            self.governance.record(
                outcome.ledger_id, outcome.key, model, provider, served.attempts, cost
            )

    async def _stream(
        self,
        request: web.Request,
        dialect: Dialect,
        exchange: Exchange,
        stream: RouterStream,
        batches: _Batches,
        first: list[Delta],
        outcome: _Outcome,
    ) -> web.StreamResponse:
        request_id = stream.request_id
        headers = {**_SSE_HEADERS, "x-request-id": request_id}
        if dropped := stream.dropped:
            headers["x-polyroute-dropped"] = ", ".join(dropped)
        if stream.cache is not None:
            headers["x-polyroute-cache"] = stream.cache
        if stream.budget_remaining_usd is not None:
            headers[_BUDGET_HEADER] = budget_header(stream.budget_remaining_usd)
        response = _EventStream(headers=headers)
        await response.prepare(request)
        # One send per upstream read, the first with the headers and the opening
        # events, and one for the end (the dialect's end events and the terminator).
        pending = exchange.opening(stream, request_id)
        try:
            exchange.encode(first, pending)
            await response.write(_take(pending))
            async for batch in batches:
                exchange.encode(batch, pending)
                if pending:
                    await response.write(_take(pending))
            pending.append(await exchange.closing(stream))
        except PolyrouteError as error:
            outcome.status = "stream_error"
            # What this read brought before the error goes first (nothing sent twice).
            pending.append(exchange.failure(dialect.error(error)))
            await response.write_eof(_take(pending))
            return response
        except asyncio.CancelledError:
            if not self._stopping:
                raise  # the client went away: nobody to tell
            # Cancelled by drain(): the gateway stops past its drain time. Say so, and
            # end the response properly, rather than cutting the connection.
            outcome.status = "stream_error"
            stopped = dialect.refusal(503, "the gateway stopped before the answer was complete")
            with contextlib.suppress(OSError, RuntimeError, asyncio.TimeoutError):
                await asyncio.wait_for(response.write_eof(exchange.failure(stopped)), 0.5)
            return response
        await response.write_eof(_take(pending))
        return response

    # Models and health --------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        """The models the request's key may use (every one without keys)."""
        names = self._models_for(request)
        if isinstance(names, web.Response):
            return names
        aliases = self.router.settings.aliases
        data = [_model(name, aliases.get(name)) for name in names]
        return json_response({"object": "list", "data": data})

    async def get_model(self, request: web.Request) -> web.Response:
        names = self._models_for(request)
        if isinstance(names, web.Response):
            return names
        name = request.match_info["model"]
        if name not in names:
            message = f"model {clipped(name)!r} is not served here"
            refusal = self.chat.refusal(404, message, "model_not_found")
            return error_response(refusal, request_id_of(request))
        return json_response(_model(name, self.router.settings.aliases.get(name)))

    def _models_for(self, request: web.Request) -> list[str] | web.Response:
        """The names the request's key may use, or its refusal (no valid key)."""
        generation = self.generation
        key = self._caller(generation, request, self.chat, request_id_of(request), None)
        if isinstance(key, web.Response):
            return key
        router = generation.router
        if key is None or key.models is None:
            return router.known_models()
        return router.known_models(lambda name: key.allows(name, router.resolve_model(name)))

    async def count_tokens(self, request: web.Request) -> web.Response:
        """``POST /v1/messages/count_tokens``: exact from an Anthropic-format entry,
        estimated otherwise (``x-polyroute-token-count`` says which)."""
        request_id = request_id_of(request)
        dialect = self.messages
        generation = self.generation.enter()  # its upstream may be asked: held till the end
        try:
            key = self._caller(generation, request, dialect, request_id, None)
            if isinstance(key, web.Response):
                return key
            router = generation.router
            body = await _json_body(request, generation.config.body_timeout_s)
            exchange = await dialect.read(body, request.headers)
            if not exchange.model and not generation.config.default_model_when_missing:
                return error_response(_missing_model(dialect), request_id)
            model = exchange.model or router.default_model or ""
            if key is not None and (
                refused := await self._key_refuses(router, key, dialect, model)
            ):
                return error_response(refused, request_id)
            count = await router.count_tokens(
                exchange.model, exchange.messages, native=exchange.native, **exchange.options
            )
        except PolyrouteError as error:
            return error_response(dialect.error(error), request_id)
        finally:
            generation.leave()
        headers = {
            "x-request-id": request_id,
            "x-polyroute-token-count": "exact" if count.exact else "estimate",
            "x-polyroute-provider": count.provider or "",
        }
        return json_response({"input_tokens": count.input_tokens}, headers=headers)

    async def get_response(self, request: web.Request) -> web.Response:
        """A stored ``/v1/responses`` answer, by id."""
        refused = self._caller(
            self.generation, request, self.responses, request_id_of(request), None
        )
        if isinstance(refused, web.Response):
            return refused
        try:
            record = await self.responses.stored(request.match_info["id"])
        except PolyrouteError as error:
            return error_response(self.responses.error(error), request_id_of(request))
        return json_response(record["response"])

    def _refuses_probe(self, request: web.Request) -> web.Response | None:
        """With ``gateway.protect_metrics``, the 401 of a request to ``/metrics`` or
        ``/readyz`` that carries neither a gateway key nor the admin key."""
        if not self.config.protect_metrics or self.keys.find(request.headers) is not None:
            return None
        admin_key = self.governance.admin_key
        presented = presented_key(request.headers).encode()
        if admin_key is not None and hmac.compare_digest(presented, admin_key.encode()):
            return None
        message = (
            f"{request.path} needs a gateway key or the admin key (Authorization: Bearer ...): "
            "gateway.protect_metrics is on"
        )
        refusal = self.chat.refusal(401, message, "invalid_api_key")
        return error_response(refusal, request_id_of(request))

    async def metrics_text(self, request: web.Request) -> web.Response:
        if (refused := self._refuses_probe(request)) is not None:
            return refused
        circuits = {entry.name: entry.cooling_down for entry in self.router.entry_status()}
        in_flight = len(self._in_flight)
        self.metrics.observe_governance(self.governance.figures(self.router))
        self.metrics.observe_gateway(
            self.admission.saturation(self.config, in_flight, self.connections)
        )
        body = self.metrics.exposition(in_flight, circuits, *self.router.state_figures())
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok", "pid": os.getpid()})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready while at least one entry can serve a request now (by the router's own
        rule: a key set, working, not cooling down); otherwise 503 with each reason.
        The gateway's own load is told apart (``gateway``), and does not make it 503."""
        if (refused := self._refuses_probe(request)) is not None:
            return refused
        entries = self.router.entry_status()
        reasons = {entry.name: entry.unusable for entry in entries if entry.unusable}
        ready = len(reasons) < len(entries)
        body = {
            "status": "ready" if ready else "not ready",
            "unavailable": reasons,
            "state": self.router.describe_state(),
            "gateway": self.admission.saturation(
                self.config, len(self._in_flight), self.connections
            ).as_dict(),
        }
        return json_response(body, status=200 if ready else 503)


class _EventStream(web.StreamResponse):
    """A stream whose headers leave with its first body bytes, in one send: aiohttp's
    ``StreamResponse`` sends them alone at ``prepare()`` (its ``Response`` buffers them
    like this). ``_stream`` writes right after ``prepare()``, so nothing waits."""

    _send_headers_immediately = False


def _take(pending: list[bytes]) -> bytes:
    """``pending`` joined, and emptied before the send is awaited, so that it only ever
    holds bytes not yet handed to the connection (what an error event follows)."""
    data = b"".join(pending)
    pending.clear()
    return data


async def _json_body(request: web.Request, timeout_s: float) -> Any:
    """The request's body, decoded; raises :class:`InvalidRequestError` when it is not
    JSON, :class:`RequestTimeoutError` when it is not all there within ``timeout_s``
    (``gateway.body_timeout_s``), and aiohttp's 413 when it is over ``max_body_bytes``."""
    try:
        if request.content.is_eof():  # all there already (most bodies come with their
            raw = await request.read()  # headers): no clock to set and cancel
        else:
            async with asyncio.timeout(timeout_s):
                raw = await request.read()
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body did not arrive within {timeout_s} s (gateway.body_timeout_s)"
        ) from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        if "surrogate" in str(error):  # "\ud800" escaped: JSON's syntax, not Unicode
            raise InvalidRequestError(
                f"the body holds a lone surrogate escape (such as \\ud800), which is not a "
                f"character: send text as UTF-8 ({error})"
            ) from None
        raise InvalidRequestError(f"the body is not JSON: {error}") from None


def _refusal(
    error: PolyrouteError, dialect: Dialect, request_id: str, outcome: _Outcome
) -> web.Response:
    """``error``, raised before the answer began, in ``dialect``'s shape."""
    if isinstance(error, ModelNotSupportedError):
        outcome.model = "(unknown)"  # callers choose the names: no label per typo
    return error_response(dialect.error(error), request_id)


def _labels(outcome: _Outcome) -> RequestLabels:
    """What the request's record says of its caller: the endpoint, the key's and team's
    names, and whether it may hold the content (the key's ``log_content``, else the
    gateway's)."""
    key = outcome.key
    log_content = key.log_content if key is not None else None
    if log_content is None:
        log_content = outcome.generation.config.log_content
    if key is None:
        return RequestLabels(
            outcome.endpoint, log_content=log_content, traceparent=outcome.traceparent
        )
    return RequestLabels(outcome.endpoint, key.name, key.team, log_content, outcome.traceparent)


def _refusal_in(response: web.StreamResponse) -> tuple[str, str]:
    """The error code (else its type) and message of a refusal answered before routing,
    read back from its body: every dialect's error object has them under ``error``."""
    body: Any = None
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(response.body)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return f"http_{response.status}", response.reason or ""
    kind = error.get("code") or error.get("type") or f"http_{response.status}"
    return str(kind), str(error.get("message") or "")


def _refusal_record(outcome: _Outcome, request_id: str, started: float) -> RequestRecord:
    """The record of a request the gateway refused (or lost) before the router had it."""
    return build_record(
        request_id=request_id,
        labels=_labels(outcome),
        endpoint=outcome.endpoint,
        model=outcome.model,
        resolved_model=None,
        provider=None,
        status="cancelled" if outcome.refusal is None else "failed",
        attempts=[],
        cost=FREE,
        started=started,
        refusal=outcome.refusal,
    )


def usd_header(usd: float | None, places: int = 10) -> str:
    """An amount of USD as a header: plain decimals (no exponent) to ``places``, or
    ``unpriced``."""
    return "unpriced" if usd is None else f"{usd:.{places}f}".rstrip("0").rstrip(".")


def budget_header(usd: float) -> str:
    """What is left of a budget as a header: budgets count whole micro-dollars, and more
    places would print a large amount's float noise ($999,999,999.95 as ...9500000477)."""
    return usd_header(usd, 6)


def _facts_headers(stream: RouterStream, request_id: str) -> dict[str, str]:
    """How a whole answer was served, in headers (a stream says it in its last event)."""
    facts = polyroute_facts(stream)
    headers = {
        "x-request-id": request_id,
        "x-polyroute-provider": facts["provider"] or "",
        "x-polyroute-model": facts["model"] or "",
        "x-polyroute-attempts": str(facts["attempts"]),
        "x-polyroute-cost-usd": usd_header(facts["cost_usd"]),
    }
    if dropped := facts.get("dropped"):
        headers["x-polyroute-dropped"] = ", ".join(dropped)
    if cache := facts.get("cache"):
        headers["x-polyroute-cache"] = cache
    if stream.budget_remaining_usd is not None:
        headers[_BUDGET_HEADER] = budget_header(stream.budget_remaining_usd)
    return headers


def _model(name: str, alias_of: str | None = None) -> dict[str, Any]:
    """OpenAI's model object; an alias says so in an extra ``polyroute`` field (clients
    ignore fields they do not know)."""
    model: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "polyroute"}
    if alias_of is not None:
        model["polyroute"] = {"alias_of": alias_of}
    return model


def _missing_model(dialect: Dialect) -> WireError:
    """OpenAI's own answer to a request without ``model`` (its words, its 400); the
    config's ``default_model`` is used instead only with
    ``gateway.default_model_when_missing``."""
    message = "you must provide a model parameter"
    return dialect.refusal(400, message, "missing_required_parameter", param="model")


def served_endpoints(app: web.Application) -> list[str]:
    """``app``'s routes as ``METHOD /path``, the admin API's left out (it is not for
    clients, and may not be there at all)."""
    endpoints = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD" and not path.startswith("/admin"):
            endpoints.append(f"{route.method} {path}")
    return endpoints


def _too_many(dialect: Dialect, message: str, wait: float) -> WireError:
    refusal = dialect.refusal(429, message, "rate_limit_exceeded")
    return WireError(refusal.status, refusal.body, wait, refusal.code)


def _code_for(status: int) -> str | None:
    return {413: "request_too_large", 404: "not_found", 405: "method_not_allowed"}.get(status)
