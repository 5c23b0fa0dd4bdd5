"""Google's Gemini API, natively (``type: gemini``).

POST ``{base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse`` with the key in
``x-goog-api-key``. The OpenAI-shaped request is translated: roles ``user``/``model``,
system messages to ``systemInstruction``, tools to ``functionDeclarations``, tool calls
and results to ``functionCall``/``functionResponse`` parts, sampling options to
``generationConfig``, ``response_format`` to ``responseMimeType``/``responseSchema``.
Each SSE event is a ``GenerateContentResponse``; the answer ends with the chunk that
carries a ``finishReason``. SAFETY, RECITATION and the other blocking reasons end it
as ``content_filter``, never as a plain stop.
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import Iterator
from typing import Any

from polyroute.core.deltas import (
    Delta,
    ExtraDelta,
    FinishDelta,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageDelta,
)
from polyroute.core.embeddings import Embedded, EncodingFormat, read_vector
from polyroute.core.errors import (
    AuthenticationError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotSupportedError,
    PolyrouteError,
    RateLimitedError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from polyroute.core.jsoncodec import loads
from polyroute.core.messages import Message, continuation_messages
from polyroute.core.request import ChatRequest
from polyroute.core.sse import SSEEvent, excerpt
from polyroute.providers.compat import AsyncGeneratorProvider
from polyroute.providers.translate import (
    alternating_turns,
    call_arguments,
    custom_as_function,
    inline_media,
)

_FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"} | dict.fromkeys(
    _FILTERED, "content_filter"
)
_GENERATION = {
    "temperature": "temperature",
    "top_p": "topP",
    "max_tokens": "maxOutputTokens",
    "max_completion_tokens": "maxOutputTokens",
    "stop": "stopSequences",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
_TAKEN = {*_GENERATION, "tools", "tool_choice", "response_format", "parallel_tool_calls"}
_RETRYABLE = {"UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "ABORTED"}
_TOO_LONG = re.compile(r"exceeds the maximum number of tokens|too many tokens|token limit", re.I)


class Gemini(AsyncGeneratorProvider):
    """Google's Gemini API (generativelanguage), or a server speaking it."""

    type_name = "gemini"
    url = "https://ai.google.dev"
    base_url = "https://generativelanguage.googleapis.com"
    prices_from = "google"
    working = True
    needs_auth = True
    supports_system_message = True
    supports_message_history = True
    supports_continuation = True
    supports_tools = True
    supports_vision = True
    supports_json_schema = True
    supports_embeddings = True
    default_model = "gemini-2.5-flash"
    headers = {"accept": "text/event-stream", "content-type": "application/json"}
    end_event_name = "a chunk with a finishReason"
    accepted_options = frozenset(_TAKEN)

    def __init__(self, *, base_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if base_url is not None:
            self.base_url = base_url.rstrip("/")

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key}

    def request_url(self, model: str) -> str:
        if self.api_endpoint:  # a fixed endpoint given in the config
            return self.api_endpoint
        return f"{self.base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse"

    # The request -----------------------------------------------------------------

    def build_request(
        self,
        model: str,
        request: ChatRequest,
        *,
        continue_from: str | None = None,
        prefill: bool | None = None,
    ) -> dict[str, Any]:
        messages = request.messages
        if continue_from:
            # Always by instruction: the API answers a conversation ending in a model
            # turn with a new turn, not the rest of that one.
            messages = continuation_messages(messages, continue_from, prefill=False)
        system = [m.text() for m in messages if m.role in ("system", "developer")]
        turns = [m for m in messages if m.role not in ("system", "developer")]
        # A tool result names the function it answers: found from the call's id.
        names = {call.id: call.function.name for m in turns for call in m.tool_calls or []}
        contents = alternating_turns(
            turns, lambda m: _parts(m, names), assistant="model", content_key="parts"
        )
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        options = request.options
        config: dict[str, Any] = {}
        for name, wire in _GENERATION.items():
            if (value := options.get(name)) is not None:
                config[wire] = [value] if name == "stop" and isinstance(value, str) else value
        if response_format := options.get("response_format"):
            config |= _response_format(response_format)
        if config:
            body["generationConfig"] = config
        if tools := options.get("tools"):
            body["tools"] = [{"functionDeclarations": [_declaration(tool) for tool in tools]}]
            if (choice := options.get("tool_choice")) is not None:
                body["toolConfig"] = {"functionCallingConfig": _calling_config(choice)}
        return body

    # The answer ------------------------------------------------------------------

    def stream_parser(self, continue_from: str | None = None) -> _AnswerParser:
        return _AnswerParser(self)

    def parse_event(self, event: SSEEvent, out: list[Delta]) -> bool:
        return _AnswerParser(self)(event, out)

    # Errors ------------------------------------------------------------------------

    def classify_status_error(self, error: UpstreamStatusError, model: str) -> PolyrouteError:
        try:
            payload = loads(error.body)
        except ValueError:
            return error
        if isinstance(payload, list) and payload:  # some gateways wrap it in a list
            payload = payload[0]
        if not isinstance(payload, dict) or not isinstance(payload.get("error"), dict):
            return error
        return self.error_from_payload(payload["error"], error.status, model, error.retry_after)

    def error_from_payload(
        self,
        detail: dict[str, Any],
        status: int | None,
        model: str,
        retry_after: float | None = None,
    ) -> PolyrouteError:
        """The typed error for Google's ``{"code", "message", "status"}``."""
        kind, message = str(detail.get("status", "")), str(detail.get("message", detail))
        code = detail.get("code")
        status = status or (code if isinstance(code, int) and 400 <= code < 600 else None)
        provider = self.entry_name
        denied = kind in ("UNAUTHENTICATED", "PERMISSION_DENIED")
        if denied or "api key not valid" in message.lower():
            return AuthenticationError(
                status or 401, provider=provider, body=message, retryable=False
            )
        if kind == "RESOURCE_EXHAUSTED":
            return RateLimitedError(
                status or 429, provider=provider, body=message, retry_after=retry_after
            )
        if kind == "INVALID_ARGUMENT" and _TOO_LONG.search(message):
            return ContextLengthExceededError(
                status or 400, provider=provider, body=message, retryable=False
            )
        if kind == "NOT_FOUND" and "model" in message.lower():
            return ModelNotSupportedError(model, provider=provider, detail=message)
        if status is not None:
            return UpstreamStatusError(
                status,
                provider=provider,
                body=f"{kind}: {message}" if kind else message,
                retry_after=retry_after,
                retryable=kind in _RETRYABLE or status >= 500 or status == 408,
            )
        return UpstreamError(
            f"error inside the stream: {kind}: {message}",
            provider=provider,
            retryable=kind in _RETRYABLE or not kind,
        )

    # Models ------------------------------------------------------------------------

    @property
    def models_url(self) -> str:
        return f"{self.base_url}/v1beta/models?pageSize=1000"

    # Embeddings --------------------------------------------------------------------

    def embeddings_request(
        self, model: str, inputs: list[str], dimensions: int | None, encoding_format: EncodingFormat
    ) -> tuple[str, dict[str, Any]]:
        """``POST {base_url}/v1beta/models/{model}:batchEmbedContents``, one request per
        input, as google-genai's ``embed_content`` sends several contents; Gemini
        answers floats whatever the form asked."""
        extra = {} if dimensions is None else {"outputDimensionality": dimensions}
        requests = [
            {
                "model": f"models/{model}",
                "content": {"role": "user", "parts": [{"text": text}]},
                **extra,
            }
            for text in inputs
        ]
        url = f"{self.base_url}/v1beta/models/{model}:batchEmbedContents"
        return url, {"requests": requests}

    def read_embeddings(self, answer: Any) -> Embedded:
        """``embeddings[].values``, in the order of the requests (the API's promise),
        and ``usageMetadata`` when the answer has it."""
        embeddings = answer["embeddings"]
        if not isinstance(embeddings, list):
            raise TypeError("embeddings is not a list")
        vectors = [
            read_vector(item.get("values"), f"embeddings[{position}].values")
            for position, item in enumerate(embeddings)
        ]
        usage = None
        if isinstance(metadata := answer.get("usageMetadata"), dict):
            prompt = int(metadata.get("promptTokenCount") or 0)
            usage = Usage(prompt, 0, int(metadata.get("totalTokenCount") or prompt))
        return Embedded(vectors, usage)

    def model_ids(self, listing: Any) -> Iterator[str]:
        """The models that can ``generateContent``, without the ``models/`` prefix."""
        return (
            str(item["name"]).removeprefix("models/")
            for item in listing["models"]
            if "generateContent" in item.get("supportedGenerationMethods", ["generateContent"])
        )


class _AnswerParser:
    """One answer's chunks; counts the function calls so each gets its own index."""

    __slots__ = ("_calls", "_provider")

    def __init__(self, provider: Gemini) -> None:
        self._provider = provider
        self._calls = 0

    def __call__(self, event: SSEEvent, out: list[Delta]) -> bool:
        try:
            chunk = loads(event.data)
            if "error" in chunk:
                raise self._provider.error_from_payload(chunk["error"], None, "?")
            ended = False
            candidates = chunk.get("candidates") or ()
            for candidate in candidates:
                for part in (candidate.get("content") or {}).get("parts") or ():
                    self._part(part, out)
                if reason := candidate.get("finishReason"):
                    out.append(FinishDelta(FINISH_REASONS.get(reason, str(reason).lower())))
                    if reason in _FILTERED or candidate.get("safetyRatings"):
                        out.append(ExtraDelta({"gemini_finish": _facts(candidate)}))
                    ended = True
            if (chunk.get("promptFeedback") or {}).get("blockReason"):
                # The prompt itself was blocked: no candidate, the answer ends here.
                out.append(FinishDelta("content_filter"))
                out.append(ExtraDelta({"gemini_prompt_feedback": chunk["promptFeedback"]}))
                ended = True
            if usage := chunk.get("usageMetadata"):
                out.append(UsageDelta(_usage(usage)))
            if grounding := [
                c["groundingMetadata"] for c in candidates if "groundingMetadata" in c
            ]:
                out.append(ExtraDelta({"gemini_grounding": grounding}))
            return ended
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UpstreamProtocolError(
                f"malformed chunk ({type(error).__name__}: {error}): {excerpt(event.data)}",
                provider=self._provider.entry_name,
            ) from None

    def _part(self, part: dict[str, Any], out: list[Delta]) -> None:
        if "text" in part:
            text = part["text"]
            if not isinstance(text, str):
                raise TypeError("part text is not a string")
            if text:
                out.append(ReasoningDelta(text) if part.get("thought") else TextDelta(text))
        elif call := part.get("functionCall"):
            number = self._calls
            self._calls += 1
            call_id = str(call.get("id") or f"call_{number}")
            arguments = json.dumps(call.get("args") or {})
            out.append(ToolCallDelta(number, call_id, str(call["name"]), arguments))
        elif not part.get("thoughtSignature"):
            out.append(ExtraDelta({"gemini_part": part}))


def _facts(candidate: dict[str, Any]) -> dict[str, Any]:
    kept = ("finishReason", "safetyRatings", "finishMessage")
    return {k: v for k, v in candidate.items() if k in kept}


_USAGE_TOTALS = ("promptTokenCount", "candidatesTokenCount", "totalTokenCount")


def _usage(usage: dict[str, Any]) -> Usage:
    prompt = int(usage.get("promptTokenCount") or 0)
    completion = int(usage.get("candidatesTokenCount") or 0) + int(
        usage.get("thoughtsTokenCount") or 0
    )
    total = int(usage.get("totalTokenCount") or prompt + completion)
    details = {k: v for k, v in usage.items() if k not in _USAGE_TOTALS}
    return Usage(prompt, completion, total, details)


# Translating the conversation ---------------------------------------------------------


def _parts(message: Message, names: dict[str, str]) -> list[dict[str, Any]]:
    if message.role == "tool":
        name = names.get(message.tool_call_id or "")
        if name is None:
            raise InvalidRequestError(
                f"tool result {message.tool_call_id!r} answers no tool call in the conversation"
            )
        text = message.text()
        try:
            result = json.loads(text)
        except ValueError:
            result = text
        response = result if isinstance(result, dict) else {"result": result}
        return [{"functionResponse": {"name": name, "response": response}}]
    parts: list[dict[str, Any]] = []
    if isinstance(message.content, str):
        if message.content:
            parts.append({"text": message.content})
    else:
        parts += [_part(part.model_dump()) for part in message.content or []]
    for call in message.tool_calls or []:
        arguments = call_arguments(call, "Gemini")
        parts.append({"functionCall": {"name": call.function.name, "args": arguments}})
    return parts


def _part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part["type"]
    if kind == "text":
        return {"text": part["text"]}
    if kind == "image_url":
        url = part["image_url"]["url"]
        if inline := inline_media(url):
            return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
        mime = mimetypes.guess_type(url)[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    if kind == "input_audio":
        audio = part["input_audio"]
        return {"inlineData": {"mimeType": f"audio/{audio['format']}", "data": audio["data"]}}
    if kind == "file" and (inline := inline_media(part["file"].get("file_data") or "")):
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    raise InvalidRequestError(f"this {kind} content part cannot be sent to Gemini")


def _declaration(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    if tool.get("type") == "custom":
        function = custom_as_function(tool["custom"])
    declaration = {"name": function.get("name")}
    if function.get("description"):
        declaration["description"] = function["description"]
    if function.get("parameters"):
        declaration["parameters"] = function["parameters"]
    return declaration


def _calling_config(choice: Any) -> dict[str, Any]:
    if isinstance(choice, dict):
        named = choice["custom"] if choice.get("type") == "custom" else choice["function"]
        return {"mode": "ANY", "allowedFunctionNames": [named["name"]]}
    return {"mode": {"required": "ANY", "none": "NONE"}.get(choice, "AUTO")}


def _response_format(response_format: dict[str, Any]) -> dict[str, Any]:
    kind = response_format.get("type")
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return {"responseMimeType": "application/json", "responseSchema": schema}
    return {}
