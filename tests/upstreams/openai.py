"""A local server speaking OpenAI's streaming chat-completions format."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from openai.types.chat import ChatCompletionChunk

from polyroute.core.deltas import Usage
from polyroute.core.sse import OpenAIChunkEncoder
from tests.upstreams.scripted import Chunk, Script, ScriptedUpstream


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
    ``{"index", "custom": {"input"}}``, as servers stream them."""

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
