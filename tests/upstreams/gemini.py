"""A local server speaking the Gemini API's streamGenerateContent (``alt=sse``).

Written from the public API reference: each SSE ``data:`` event is a whole
``GenerateContentResponse`` (candidates with content parts, then a last chunk with the
``finishReason`` and ``usageMetadata``); no end marker. Every chunk is checked against
the ``google-genai`` package's own (strict) types before it is sent.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from google.genai import types

from tests.upstreams.scripted import Chunk, Script, ScriptedUpstream

FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}


def gemini_error(code: int, status: str, message: str) -> str:
    """A non-2xx body as the API writes it."""
    return json.dumps({"error": {"code": code, "message": message, "status": status}})


class GeminiUpstream(ScriptedUpstream):
    """A script's chunk is a piece of text, or one of ``{"functionCall": {"name",
    "args"}}``, ``{"thought": text}``, ``{"error": {...}}`` (sent inside the stream),
    ``{"finishReason": "SAFETY"}`` (a chunk that ends the answer, filtered)."""

    def __init__(self, default: Script | None = None, models: list[str] | None = None) -> None:
        super().__init__("/v1beta/models", default)
        self.models = models or ["gemini-local-pro", "gemini-local-flash"]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> GeminiUpstream:
        await super().start()
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/v1beta/models":
            listed = [
                {"name": f"models/{m}", "supportedGenerationMethods": ["generateContent"]}
                for m in self.models
            ]
            listed.append(
                {"name": "models/embedder", "supportedGenerationMethods": ["embedContent"]}
            )
            return web.json_response({"models": listed})
        return await super()._handle(request)

    def _chunk(self, payload: dict[str, Any], script: Script) -> bytes:
        if "error" not in payload:
            types.GenerateContentResponse.model_validate(payload)
        return self.frame(json.dumps(payload).encode(), script.line_end)

    def _parts(self, parts: list[dict[str, Any]], script: Script, **candidate: Any) -> bytes:
        content = {"role": "model", "parts": parts}
        payload = {"candidates": [{"content": content, "index": 0, **candidate}]}
        return self._chunk({**payload, "modelVersion": "gemini-local"}, script)

    def encode_chunk(self, index: int, text: Chunk, script: Script, request: Any) -> bytes:
        if isinstance(text, str):
            return self._parts([{"text": text}], script)
        if "functionCall" in text:
            return self._parts([{"functionCall": text["functionCall"]}], script)
        if "thought" in text:
            return self._parts([{"text": text["thought"], "thought": True}], script)
        if "error" in text:
            return self._chunk({"error": text["error"]}, script)
        if "finishReason" in text:
            ratings = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]
            return self._parts([], script, finishReason=text["finishReason"], safetyRatings=ratings)
        raise ValueError(f"unknown script chunk {text!r}")

    def encode_end(self, script: Script, request: Any) -> bytes:
        reason = FINISH.get(script.finish_reason, script.finish_reason)
        usage = {"promptTokenCount": 3, "candidatesTokenCount": 4, "totalTokenCount": 7}
        content = {"role": "model", "parts": [{"text": ""}]}
        candidate = {"content": content, "finishReason": reason, "index": 0}
        payload = {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": "gemini-local",
        }
        return self._chunk(payload, script)
