"""The gateway: an aiohttp application that speaks OpenAI's chat-completions API in
front of a :class:`Router`.

A streamed answer starts only once the router has its first chunk, so that a request
no provider could serve gets a real HTTP status (404, 502, 504) rather than a 200
whose stream fails. After that, a failure the router cannot relay ends the stream with
a ``data: {"error": ...}`` event and no ``data: [DONE]``: never a cut answer that looks
complete.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any

import orjson
from aiohttp import web

from polyroute.core.deltas import Delta, FinishDelta, RestartDelta, UsageDelta
from polyroute.core.errors import PolyrouteError, UpstreamError
from polyroute.core.logging import get_logger
from polyroute.core.sse import DONE_EVENT, OpenAIChunkEncoder, encode_event
from polyroute.router.config import GatewayConfig
from polyroute.router.router import Router
from polyroute.router.stream import RouterStream
from polyroute.server.wire import (
    WireError,
    completion,
    gateway_error,
    polyroute_facts,
    read_chat_body,
    wire_error,
)

_log = get_logger()
_ID_PREFIX = secrets.token_hex(4)
_request_numbers = itertools.count(1)
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


class Gateway:
    """Serves ``router`` over HTTP; ``app()`` is the aiohttp application."""

    def __init__(self, router: Router, config: GatewayConfig | None = None) -> None:
        self.router = router
        self.config = config or GatewayConfig()

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.max_body_bytes, middlewares=[self._as_openai_errors]
        )
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
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
        request_id = _request_id(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as error:
            return error_response(gateway_error(400, f"the body is not JSON: {error}"), request_id)
        try:
            call = read_chat_body(body)
            stream = self.router.stream(call.model, call.messages, **call.options)
        except PolyrouteError as error:
            return error_response(wire_error(error), request_id)
        async with stream:
            deltas = stream.deltas()
            try:
                first = await anext(deltas, None)
            except PolyrouteError as error:
                return error_response(wire_error(error), request_id)
            if not call.stream:
                return await self._whole(stream, deltas, request_id)
            return await self._stream(
                request, stream, deltas, first, call.include_usage, request_id
            )

    async def _whole(self, stream: RouterStream, deltas: Any, request_id: str) -> web.Response:
        try:
            async for _delta in deltas:
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
        deltas: Any,
        first: Delta | None,
        include_usage: bool,
        request_id: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={**_SSE_HEADERS, "x-request-id": request_id})
        await response.prepare(request)
        encoder = OpenAIChunkEncoder(stream.model or "", id=f"chatcmpl-{request_id}")
        await response.write(encode_event(encoder.chunk({"role": "assistant", "content": ""})))
        finish: str | None = None
        try:
            pending = [first] if first is not None else []
            async for delta in _chain(pending, deltas):
                if isinstance(delta, FinishDelta):
                    finish = delta.reason  # sent last, with the facts
                elif isinstance(delta, RestartDelta):
                    raise UpstreamError(
                        "the answer broke off and restarted on another provider; "
                        "send the request again",
                        provider=delta.provider,
                        retryable=True,
                    )
                elif not isinstance(delta, UsageDelta):
                    await response.write(encoder.encode(delta))
        except PolyrouteError as error:
            await response.write(encode_event(wire_error(error).body()))
            return response
        facts = polyroute_facts(stream.provider, stream.model, len(stream.attempts))
        last: dict[str, Any] = {} if include_usage else {"polyroute": facts}
        await response.write(encode_event(encoder.chunk(finish_reason=finish or "stop", **last)))
        if include_usage:
            usage = stream.usage
            usage_chunk = encoder.chunk(usage=usage, polyroute=facts)
            if usage is None:
                usage_chunk["usage"] = None
            await response.write(encode_event(usage_chunk))
        await response.write(DONE_EVENT)
        await response.write_eof()
        return response

    # Models and health --------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        names = self.router.policy.known_models()
        return json_response({"object": "list", "data": [_model(name) for name in names]})

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name not in self.router.policy.known_models():
            error = gateway_error(404, f"model {name!r} is not served here", "model_not_found")
            return error_response(error, _request_id(request))
        return json_response(_model(name))

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready while at least one entry would admit a request (working, not cooling
        down); otherwise 503 with each entry's reason."""
        reasons = {}
        for provider in self.router.providers:
            name = provider.entry_name
            if not provider.working:
                reasons[name] = "not working"
            elif self.router.health.state(name) == "open":
                reasons[name] = "cooling down"
        ready = len(reasons) < len(self.router.providers)
        body = {"status": "ready" if ready else "not ready", "unavailable": reasons}
        return json_response(body, status=200 if ready else 503)


async def _chain(first: list[Delta], rest: Any) -> Any:
    for delta in first:
        yield delta
    async for delta in rest:
        yield delta


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "polyroute"}


def _request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id", "")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return f"{_ID_PREFIX}{next(_request_numbers):08x}"


def _code_for(status: int) -> str | None:
    return {413: "request_too_large", 404: "not_found", 405: "method_not_allowed"}.get(status)
