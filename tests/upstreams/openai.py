"""A local server speaking OpenAI's streaming chat-completions format, and its
embeddings endpoint."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

import orjson
from aiohttp import web
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletionChunk

from polyroute.core.deltas import Usage
from polyroute.core.sse import OpenAIChunkEncoder
from tests.upstreams.scripted import Chunk, Script, ScriptedUpstream
from tests.upstreams.server import RecordedRequest


def encoder_for(request: Any) -> OpenAIChunkEncoder:
    """polyroute's one OpenAI-format encoder, with the fixture's fixed id and time."""
    model = str(request.get("model", "?")) if isinstance(request, dict) else "?"
    return OpenAIChunkEncoder(model, id="chatcmpl-local", created=1_700_000_000)


class OpenAIUpstream(ScriptedUpstream):
    """Streams chunks as OpenAI does: a role delta first, content deltas, a final delta with
    ``finish_reason``, the usage chunk when asked for, then ``data: [DONE]``.

    A script's chunk is a text, or a whole ``delta`` object (tool-call fragments,
    reasoning...) sent as it is. A custom tool's call fragment is a ``tool_calls`` entry
    ``{"index", "id", "type": "custom", "custom": {"name", "input"}}``, later ones
    ``{"index", "custom": {"input"}}``, as servers stream them.

    ``POST /v1/embeddings`` answers with :func:`embedding_for` each input (floats, or
    base64 as the SDK asks by default) and a usage of one token per word; the next
    queued script applies to it too: its ``status`` (with ``error_body`` and
    ``headers``) or its ``raw`` body replace the answer. ``reverse_embeddings`` sends
    ``data`` last input first (each item's ``index`` still says where it belongs)."""

    def __init__(self, default: Script | None = None, models: list[str] | None = None) -> None:
        super().__init__("/v1/chat/completions", default)
        self.models = models or ["local-large", "local-small"]
        self.sent: list[dict[str, Any]] = []
        """Every JSON chunk sent, for validation against the official types."""
        self.reverse_embeddings = False

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

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if request.path != "/v1/embeddings":
            return await super()._answer(request, record)
        script = self.queue.pop(0) if self.queue else self.default
        if script.status >= 300:
            return web.Response(
                status=script.status, text=script.error_body, headers=script.headers
            )
        if script.raw is not None:
            return web.Response(body=script.raw, content_type="application/json")
        return self._embeddings(record.body)

    def _embeddings(self, body: Any) -> web.Response:
        texts = body.get("input") if isinstance(body, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if not texts or not all(isinstance(text, str) for text in texts):
            return _invalid("'input' must be a string or a non-empty list of strings")
        dimensions = body.get("dimensions", 8)
        if type(dimensions) is not int or dimensions < 1:
            return _invalid("'dimensions' must be a positive integer")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return _invalid("'encoding_format' must be 'float' or 'base64'")
        data = [
            {"object": "embedding", "index": i, "embedding": embedding_for(text, dimensions)}
            for i, text in enumerate(texts)
        ]
        if self.reverse_embeddings:
            data.reverse()
        tokens = sum(len(text.split()) or 1 for text in texts)
        payload = {
            "object": "list",
            "data": data,
            "model": str(body.get("model")),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        # As for the chunks: the answer must be the official client's own type.
        CreateEmbeddingResponse.model_validate(payload)
        if encoding == "base64":
            for item in data:
                vector = item["embedding"]
                packed = struct.pack(f"<{len(vector)}f", *vector)  # little-endian float32
                item["embedding"] = base64.b64encode(packed).decode()
        return web.json_response(payload)

    def _emit(self, payload: dict[str, Any], script: Script) -> bytes:
        # Every chunk this fixture sends must parse as the official client's own type:
        # the fixture cannot drift from the real format unnoticed.
        ChatCompletionChunk.model_validate(_without_custom_calls(payload))
        self.sent.append(payload)
        return self.frame(json.dumps(payload).encode(), script.line_end)

    def encode_chunk(self, index: int, text: Chunk, script: Script, request: Any) -> bytes:
        encoder = encoder_for(request)
        delta = {"content": text} if isinstance(text, str) else text
        first = b""
        if index == 0:
            first = self._emit(encoder.chunk({"role": "assistant", "content": ""}), script)
        return first + self._emit(encoder.chunk(delta, system_fingerprint="fp_local"), script)

    def encode_end(self, script: Script, request: Any) -> bytes:
        encoder = encoder_for(request)
        body = self._emit(encoder.chunk(finish_reason=script.finish_reason), script)
        wants_usage = isinstance(request, dict) and (request.get("stream_options") or {}).get(
            "include_usage"
        )
        if wants_usage:
            usage = script.usage or {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
            body += self._emit(encoder.chunk(usage=Usage.from_openai(usage)), script)
        return body + self.frame(b"[DONE]", script.line_end)


def chat_chunk(
    text: str | None, *, finish: str | None = None, role: bool = False, **extra: Any
) -> dict[str, Any]:
    """One chat-completions chunk as OpenAI writes it: ``text`` as its content delta
    (``None``: no content), ``finish`` its finish reason, ``role`` the first chunk's
    ``"assistant"``; ``extra`` keys beside (``usage``, ``obfuscation``...)."""
    delta: dict[str, Any] = {} if text is None else {"content": text}
    if role:
        delta["role"] = "assistant"
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "m",
        "system_fingerprint": "fp_up",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


def chat_answer(*chunks: dict[str, Any] | bytes, spaced: bool = False, done: bool = True) -> bytes:
    """``chunks`` as an upstream's SSE body (bytes as they are: a malformed one),
    compact as the API writes them or ``spaced`` as Python's json does, ending with
    ``[DONE]`` unless not ``done``."""

    def encoded(item: dict[str, Any] | bytes) -> bytes:
        if isinstance(item, bytes):
            return item
        return json.dumps(item).encode() if spaced else orjson.dumps(item)

    events = [b"data: " + encoded(item) + b"\n\n" for item in chunks]
    return b"".join(events) + (b"data: [DONE]\n\n" if done else b"")


def embedding_for(text: str, dimensions: int = 8) -> list[float]:
    """The fixture's vector for ``text``: ``dimensions`` numbers derived from its hash,
    each a multiple of 1/128 in [-1, 1), so float32 (base64) carries it exactly."""
    digest = hashlib.shake_256(b"openai:" + text.encode()).digest(dimensions)
    return [byte / 128 - 1 for byte in digest]


def _invalid(message: str) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return web.json_response({"error": error}, status=400)


def _without_custom_calls(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with its custom tool-call fragments checked here and left out.

    The SDK's ``ChoiceDeltaToolCall`` knows only ``type: "function"``: OpenAI's spec has
    no streamed custom call (openai/openai-python#2530, openai/openai-openapi#576),
    though servers send one shaped like the whole ``ChatCompletionMessageCustomToolCall``
    with ``input`` in pieces. Those fragments are checked loosely, and the rest of the
    chunk strictly.
    """
    choices = payload.get("choices") or []
    calls = choices[0]["delta"].get("tool_calls") if choices else None
    if not calls or not any("custom" in call for call in calls):
        return payload
    for call in calls:
        if "custom" in call:
            custom = call["custom"]
            assert isinstance(call["index"], int), call
            assert call.get("type") in (None, "custom"), call
            assert set(custom) <= {"name", "input"}, call
            assert all(isinstance(value, str) for value in custom.values()), call
    kept = [call for call in calls if "custom" not in call]
    delta = {**choices[0]["delta"], "tool_calls": kept or None}
    return {**payload, "choices": [{**choices[0], "delta": delta}, *choices[1:]]}
