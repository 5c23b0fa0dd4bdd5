"""A local server speaking the Gemini API's streamGenerateContent (``alt=sse``).

Written from the public API reference: each SSE ``data:`` event is a whole
``GenerateContentResponse`` (candidates with content parts, then a last chunk with the
``finishReason`` and ``usageMetadata``); no end marker. Every chunk is checked against
the ``google-genai`` package's own (strict) types before it is sent.

``POST /v1beta/models/{model}:batchEmbedContents`` answers ``{"embeddings": [{"values"}],
"usageMetadata"}``, checked against ``types.EmbedContentResponse`` likewise.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web
from google.genai import types

from tests.upstreams.scripted import Chunk, Script, ScriptedUpstream
from tests.upstreams.server import RecordedRequest

FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}


def gemini_error(code: int, status: str, message: str) -> str:
    """A non-2xx body as the API writes it."""
    return json.dumps({"error": {"code": code, "message": message, "status": status}})


class GeminiUpstream(ScriptedUpstream):
    """A script's chunk is a piece of text, or one of ``{"functionCall": {"name",
    "args"}}``, ``{"thought": text}``, ``{"error": {...}}`` (sent inside the stream),
    ``{"finishReason": "SAFETY"}`` (a chunk that ends the answer, filtered).

    ``batchEmbedContents`` answers with :func:`embedding_for` each request's text (of its
    ``outputDimensionality``, 8 by default) and one token per word; the next queued
    script's ``status`` (``error_body``, ``headers``) or ``raw`` body replace the answer."""

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

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if not request.path.endswith(":batchEmbedContents"):
            return await super()._answer(request, record)
        script = self.queue.pop(0) if self.queue else self.default
        if script.status >= 300:
            return web.Response(
                status=script.status, text=script.error_body, headers=script.headers
            )
        if script.raw is not None:
            return web.Response(body=script.raw, content_type="application/json")
        model = request.path.removeprefix("/v1beta/").removesuffix(":batchEmbedContents")
        return _embeddings(model, record.body)

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
        usage = script.usage or {
            "promptTokenCount": 3,
            "candidatesTokenCount": 4,
            "totalTokenCount": 7,
        }
        content = {"role": "model", "parts": [{"text": ""}]}
        candidate = {"content": content, "finishReason": reason, "index": 0}
        payload = {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": "gemini-local",
        }
        return self._chunk(payload, script)


def embedding_for(text: str, dimensions: int = 8) -> list[float]:
    """The fixture's vector for ``text``: ``dimensions`` multiples of 1/128 in [-1, 1)
    derived from its hash."""
    digest = hashlib.shake_256(b"gemini:" + text.encode()).digest(dimensions)
    return [byte / 128 - 1 for byte in digest]


def _embeddings(model: str, body: Any) -> web.Response:
    """The answer to ``batchEmbedContents`` for ``model`` (``models/...``), as the API
    checks it: every request names the model of the URL, and has text parts."""
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        return _invalid("requests: a non-empty list is required")
    embeddings, tokens = [], 0
    for i, item in enumerate(requests):
        if not isinstance(item, dict) or item.get("model") != model:
            return _invalid(f"requests[{i}].model must be {model!r}, the model of the URL")
        parts = (item.get("content") or {}).get("parts")
        if not parts or not all(isinstance(part.get("text"), str) for part in parts):
            return _invalid(f"requests[{i}].content.parts: text parts are required")
        text = "".join(part["text"] for part in parts)
        dimensions = item.get("outputDimensionality", 8)
        if type(dimensions) is not int or dimensions < 1:
            return _invalid(f"requests[{i}].outputDimensionality must be a positive integer")
        embeddings.append({"values": embedding_for(text, dimensions)})
        tokens += len(text.split()) or 1
    payload = {
        "embeddings": embeddings,
        "usageMetadata": {"promptTokenCount": tokens, "totalTokenCount": tokens},
    }
    types.EmbedContentResponse.model_validate(payload)
    return web.json_response(payload)


def _invalid(message: str) -> web.Response:
    return web.Response(
        status=400,
        text=gemini_error(400, "INVALID_ARGUMENT", message),
        content_type="application/json",
    )
