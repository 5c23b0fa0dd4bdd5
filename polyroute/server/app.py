"""The gateway: an aiohttp application that speaks OpenAI's chat-completions API in
front of a :class:`Router`.

A streamed answer starts only once the router has its first chunk, so that a request
no provider could serve gets a real HTTP status (404, 502, 504) rather than a 200
whose stream fails. After that, a failure the router cannot relay ends the stream with
a ``data: {"error": ...}`` event and no ``data: [DONE]``: never a cut answer that looks
complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from polyroute.core.deltas import (
    Delta,
    FinishDelta,
    ReasoningDelta,
    RestartDelta,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
)
from polyroute.core.errors import ModelNotSupportedError, PolyrouteError, UpstreamError
from polyroute.core.logging import get_logger, new_request_id
from polyroute.core.sse import DONE_EVENT, OpenAIChunkEncoder, encode_event
from polyroute.router.config import GatewayConfig
from polyroute.router.health import describe as describe_health
from polyroute.router.router import Router
from polyroute.router.stream import RouterStream
from polyroute.server.keys import ClientKey, KeyRing
from polyroute.server.metrics import GatewayMetrics
from polyroute.server.wire import (
    WireError,
    completion,
    gateway_error,
    polyroute_facts,
    read_chat_body,
    wire_error,
)

_log = get_logger()
_Batches = AsyncGenerator[list[Delta], None]
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(error: WireError, request_id: str) -> web.Response:
    headers = {"x-request-id": request_id}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return json_response(error.body(), status=error.status, headers=headers)


@dataclass(slots=True)
class _Outcome:
    """What the access log and the metrics say of one chat request."""

    model: str = ""
    key: str | None = None
    status: str = "cancelled"
    """The HTTP status; ``stream_error`` for a stream that ended with an error event;
    ``cancelled`` when the client went away first."""
    stream: RouterStream | None = None
    messages: Any = None


class Gateway:
    """Serves ``router`` over HTTP; ``app()`` is the aiohttp application.

    Raises :class:`ConfigError` when a gateway key's environment variable is not set.
    """

    def __init__(self, router: Router, config: GatewayConfig | None = None) -> None:
        self.router = router
        self.config = config or GatewayConfig()
        self.keys = KeyRing(self.config.keys)
        self.metrics = GatewayMetrics()
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    async def drain(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the chat requests in flight to finish, then cancel
        the rest: their streams end with an error event (see :meth:`_stream`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), seconds)
        tasks = list(self._in_flight)
        self._stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.max_body_bytes, middlewares=[self._as_openai_errors]
        )
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_text)
        return app

    @web.middleware
    async def _as_openai_errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """aiohttp's own refusals (413 body too large, 404, 405) as OpenAI error objects."""
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as refused:
            if refused.status < 400:
                raise
            error = gateway_error(refused.status, refused.reason, _code_for(refused.status))
            return error_response(error, _request_id(request))
        return response

    # Chat completions ---------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = _request_id(request)
        outcome = _Outcome()
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
            self._idle.clear()
        self.metrics.in_flight.inc()
        try:
            response = await self._chat(request, request_id, outcome)
            if outcome.status == "cancelled":
                outcome.status = str(response.status)
            return response
        except web.HTTPException as refused:  # 413 from reading the body
            outcome.status = str(refused.status)
            raise
        finally:
            self.metrics.in_flight.dec()
            self._in_flight.discard(task)
            if not self._in_flight:
                self._idle.set()
            self._account(outcome, request_id, started)

    async def _chat(
        self, request: web.Request, request_id: str, outcome: _Outcome
    ) -> web.StreamResponse:
        key = self.keys.find(request.headers.get("Authorization"))
        if self.keys and key is None:
            return _refuse(
                401,
                "a valid gateway key is required (Authorization: Bearer ...)",
                "invalid_api_key",
                request_id,
            )
        outcome.key = key.name if key else None
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as error:
            return error_response(gateway_error(400, f"the body is not JSON: {error}"), request_id)
        try:
            call = read_chat_body(body)
        except PolyrouteError as error:
            return error_response(wire_error(error), request_id)
        outcome.model = call.model or self.router.settings.default_model or ""
        outcome.messages = call.messages
        if key is not None and (refused := await self._key_refuses(key, outcome.model, request_id)):
            return refused
        try:
            stream = self.router.stream(
                call.model, call.messages, request_id=request_id, **call.options
            )
        except PolyrouteError as error:
            if isinstance(error, ModelNotSupportedError):
                outcome.model = "(unknown)"  # callers choose the names: no label per typo
            return error_response(wire_error(error), request_id)
        outcome.stream = stream
        async with stream:
            batches = stream.delta_batches()
            try:
                first: list[Delta] = await anext(batches, [])
            except PolyrouteError as error:
                return error_response(wire_error(error), request_id)
            if not call.stream:
                return await self._whole(stream, batches, request_id)
            return await self._stream(
                request, stream, batches, first, call.include_usage, request_id, outcome
            )

    async def _key_refuses(
        self, key: ClientKey, model: str, request_id: str
    ) -> web.Response | None:
        """403 for a model the key may not use, 429 over its requests per minute."""
        if not key.allows(model, self.router.policy.resolve_alias(model)):
            return _refuse(
                403,
                f"key {key.name!r} may not use model {model!r}",
                "model_not_allowed",
                request_id,
            )
        wait = await self.router.state.admit_key(key.name, key.rpm) if key.rpm else None
        if wait is not None:
            error = WireError(
                429,
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                f"key {key.name!r} is over its {key.rpm} requests per minute",
                wait,
            )
            return error_response(error, request_id)
        return None

    def _account(self, outcome: _Outcome, request_id: str, started: float) -> None:
        """One metrics update and one access-log event per request."""
        self.metrics.record(outcome.model, outcome.status, outcome.stream)
        stream = outcome.stream
        usage = stream.usage if stream is not None else None
        fields: dict[str, Any] = {
            "request_id": request_id,
            "key": outcome.key,
            "model": outcome.model,
            "provider": stream.provider if stream is not None else None,
            "status": outcome.status,
            "ttft_ms": stream.ttft_ms if stream is not None else None,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
        }
        if self.config.log_content:
            fields["messages"] = outcome.messages
        _log.info("gateway.request", **fields)

    async def _whole(
        self, stream: RouterStream, batches: _Batches, request_id: str
    ) -> web.Response:
        try:
            async for _batch in batches:
                pass
        except PolyrouteError as error:
            return error_response(wire_error(error), request_id)
        body = completion(
            f"chatcmpl-{request_id}",
            stream.model or stream.requested_model,
            stream.message,
            stream.finish_reason,
            stream.usage,
        )
        headers = {
            "x-request-id": request_id,
            "x-polyroute-provider": stream.provider or "",
            "x-polyroute-model": stream.model or "",
            "x-polyroute-attempts": str(len(stream.attempts)),
        }
        return json_response(body, headers=headers)

    async def _stream(
        self,
        request: web.Request,
        stream: RouterStream,
        batches: _Batches,
        first: list[Delta],
        include_usage: bool,
        request_id: str,
        outcome: _Outcome,
    ) -> web.StreamResponse:
        response = _EventStream(headers={**_SSE_HEADERS, "x-request-id": request_id})
        await response.prepare(request)
        encoder = OpenAIChunkEncoder(stream.model or "", id=f"chatcmpl-{request_id}")
        # One send per upstream read, the first with the headers and the role chunk,
        # and one for the end: the finish chunk, [DONE] and the chunked terminator.
        pending = [encode_event(encoder.chunk({"role": "assistant", "content": ""}))]
        finish: str | None = None
        try:
            finish = _encode(encoder, first, pending, finish)
            await response.write(_take(pending))
            async for batch in batches:
                finish = _encode(encoder, batch, pending, finish)
                if pending:
                    await response.write(_take(pending))
        except PolyrouteError as error:
            outcome.status = "stream_error"
            # What this read brought before the error goes first (nothing sent twice).
            pending.append(encode_event(wire_error(error).body()))
            await response.write_eof(_take(pending))
            return response
        except asyncio.CancelledError:
            if not self._stopping:
                raise  # the client went away: nobody to tell
            # Cancelled by drain(): the gateway stops past its drain time. Say so, and
            # end the response properly, rather than cutting the connection.
            outcome.status = "stream_error"
            stopped = gateway_error(503, "the gateway stopped before the answer was complete")
            with contextlib.suppress(OSError, RuntimeError, asyncio.TimeoutError):
                await asyncio.wait_for(response.write_eof(encode_event(stopped.body())), 0.5)
            return response
        facts = polyroute_facts(stream.provider, stream.model, len(stream.attempts))
        last: dict[str, Any] = {} if include_usage else {"polyroute": facts}
        pending.append(encode_event(encoder.chunk(finish_reason=finish or "stop", **last)))
        if include_usage:
            usage = stream.usage
            usage_chunk = encoder.chunk(usage=usage, polyroute=facts)
            if usage is None:
                usage_chunk["usage"] = None
            pending.append(encode_event(usage_chunk))
        pending.append(DONE_EVENT)
        await response.write_eof(_take(pending))
        return response

    # Models and health --------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        if refused := self._unauthorized(request):
            return refused
        names = self.router.policy.known_models()
        return json_response({"object": "list", "data": [_model(name) for name in names]})

    async def get_model(self, request: web.Request) -> web.Response:
        if refused := self._unauthorized(request):
            return refused
        name = request.match_info["model"]
        if name not in self.router.policy.known_models():
            error = gateway_error(404, f"model {name!r} is not served here", "model_not_found")
            return error_response(error, _request_id(request))
        return json_response(_model(name))

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.keys and self.keys.find(request.headers.get("Authorization")) is None:
            message = "a valid gateway key is required (Authorization: Bearer ...)"
            return _refuse(401, message, "invalid_api_key", _request_id(request))
        return None

    async def metrics_text(self, request: web.Request) -> web.Response:
        names = [provider.entry_name for provider in self.router.providers]
        body = self.metrics.exposition(names, self.router.state)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok", "pid": os.getpid()})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready while at least one entry would admit a request (working, not cooling
        down); otherwise 503 with each entry's reason."""
        reasons = {}
        for provider in self.router.providers:
            name = provider.entry_name
            if not provider.working:
                reasons[name] = "not working"
            elif self.router.health.state(name) == "open":
                reasons[name] = describe_health(self.router.health, name)
        ready = len(reasons) < len(self.router.providers)
        body = {
            "status": "ready" if ready else "not ready",
            "unavailable": reasons,
            "state": self.router.state.describe_backend(),
        }
        return json_response(body, status=200 if ready else 503)


class _EventStream(web.StreamResponse):
    """A stream whose headers leave with its first body bytes, in one send: aiohttp's
    ``StreamResponse`` sends them alone at ``prepare()`` (its ``Response`` buffers them
    like this). ``_stream`` writes right after ``prepare()``, so nothing waits."""

    _send_headers_immediately = False


_PASSED_AS_THEY_ARE = frozenset({TextDelta, ToolCallDelta, ReasoningDelta})


def _encode(
    encoder: OpenAIChunkEncoder, batch: list[Delta], out: list[bytes], finish: str | None
) -> str | None:
    """Append ``batch``'s chunks to ``out``; the finish reason so far (it goes out last)."""
    for delta in batch:
        if type(delta) in _PASSED_AS_THEY_ARE:
            out.append(encoder.encode(delta))
        elif isinstance(delta, FinishDelta):
            finish = delta.reason
        elif isinstance(delta, RestartDelta):
            raise UpstreamError(
                "the answer broke off and restarted on another provider; send the request again",
                provider=delta.provider,
                retryable=True,
            )
        elif not isinstance(delta, UsageDelta):
            out.append(encoder.encode(delta))
    return finish


def _take(pending: list[bytes]) -> bytes:
    """``pending`` joined, and emptied before the send is awaited, so that it only ever
    holds bytes not yet handed to the connection (what an error event follows)."""
    data = b"".join(pending)
    pending.clear()
    return data


def _refuse(status: int, message: str, code: str, request_id: str) -> web.Response:
    return error_response(gateway_error(status, message, code), request_id)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "polyroute"}


def _request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id", "")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return new_request_id()


def _code_for(status: int) -> str | None:
    return {413: "request_too_large", 404: "not_found", 405: "method_not_allowed"}.get(status)
