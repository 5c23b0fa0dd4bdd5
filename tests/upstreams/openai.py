"""A local server speaking OpenAI's streaming chat-completions format."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.upstreams.scripted import Script, ScriptedUpstream


def chunk_payload(
    model: str, content: str | None = None, *, role: bool = False, finish_reason: str | None = None
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "system_fingerprint": "fp_local",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_payload(model: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [],
        "usage": usage,
    }


class OpenAIUpstream(ScriptedUpstream):
    """Streams chunks as OpenAI does: a role delta first, content deltas, a final delta with
    ``finish_reason``, the usage chunk when asked for, then ``data: [DONE]``."""

    def __init__(self, default: Script | None = None, models: list[str] | None = None) -> None:
        super().__init__("/v1/chat/completions", default)
        self.models = models or ["local-large", "local-small"]
        self.sent: list[dict[str, Any]] = []
        """Every JSON chunk sent, for validation against the official types."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> OpenAIUpstream:
        await super().start()
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "local"} for m in self.models
            ]
            return web.json_response({"object": "list", "data": data})
        return await super()._handle(request)

    def _emit(self, payload: dict[str, Any], script: Script) -> bytes:
        self.sent.append(payload)
        return self.frame(json.dumps(payload).encode(), script.line_end)

    def encode_chunk(self, index: int, text: str, script: Script, request: Any) -> bytes:
        model = _model(request)
        role = self._emit(chunk_payload(model, "", role=True), script) if index == 0 else b""
        return role + self._emit(chunk_payload(model, text), script)

    def encode_end(self, script: Script, request: Any) -> bytes:
        model = _model(request)
        body = self._emit(chunk_payload(model, finish_reason=script.finish_reason), script)
        wants_usage = isinstance(request, dict) and (request.get("stream_options") or {}).get(
            "include_usage"
        )
        if wants_usage:
            usage = script.usage or {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
            body += self._emit(usage_payload(model, usage), script)
        return body + self.frame(b"[DONE]", script.line_end)


def _model(request: Any) -> str:
    return str(request.get("model", "?")) if isinstance(request, dict) else "?"
