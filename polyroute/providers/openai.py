"""OpenAI-compatible chat completions: OpenAI, Groq, Together, OpenRouter, Mistral,
DeepSeek, and local servers (vLLM, Ollama, llama.cpp, LM Studio).

POST ``{base_url}/chat/completions`` with ``stream: true``; each SSE event is a
``chat.completion.chunk`` whose ``choices[0].delta.content`` is the next text, and
``data: [DONE]`` ends the answer. Errors come as ``{"error": {"message", "type",
"code"}}``, in a non-2xx body or, on some servers, inside the stream.
"""

from __future__ import annotations

from typing import Any, Literal

from polyroute.core.attempts import StreamReport
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
from polyroute.core.http import fetch_json
from polyroute.core.jsoncodec import loads
from polyroute.core.messages import Message, continuation_messages
from polyroute.core.sse import SSEEvent, excerpt
from polyroute.providers.base import STREAM_END, AsyncGeneratorProvider, ParseResult

SAMPLING_PARAMETERS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "response_format",
        "reasoning_effort",
        "service_tier",
    }
)
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})


class OpenAI(AsyncGeneratorProvider):
    """Any upstream speaking OpenAI's streaming chat-completions format."""

    name = "openai"
    url = "https://platform.openai.com"
    base_url = "https://api.openai.com/v1"
    api_endpoint = "https://api.openai.com/v1/chat/completions"
    working = True
    needs_auth = True
    supports_system_message = True
    supports_message_history = True
    default_model = "gpt-4o-mini"
    headers = {"accept": "text/event-stream", "content-type": "application/json"}
    end_event_name = "data: [DONE]"
    include_usage = True
    """Ask for the final usage chunk (``stream_options``); some old servers reject it."""
    supports_continuation = True
    continuation: Literal["instruct", "prefill"] = "instruct"
    """How a partial answer is handed over: as an assistant message followed by an
    instruction to continue, or as a final assistant message to prefill (for upstreams
    that continue one, such as vLLM's continue_final_message or DeepSeek's prefix)."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        include_usage: bool | None = None,
        continuation: Literal["instruct", "prefill"] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if base_url is not None:
            self.base_url = base_url.rstrip("/")
            if kwargs.get("api_endpoint") is None:
                self.api_endpoint = f"{self.base_url}/chat/completions"
        if include_usage is not None:
            self.include_usage = include_usage
        if continuation is not None:
            self.continuation = continuation

    def build_request(
        self,
        model: str,
        messages: list[Message],
        *,
        continue_from: str | None = None,
        **params: Any,
    ) -> Any:
        unknown = sorted(set(params) - SAMPLING_PARAMETERS)
        if unknown:
            raise InvalidRequestError(
                f"unknown request parameters {', '.join(unknown)}; "
                f"{self.entry_name} takes: {', '.join(sorted(SAMPLING_PARAMETERS))}"
            )
        if continue_from:
            prefill = self.continuation == "prefill"
            messages = continuation_messages(messages, continue_from, prefill=prefill)
        body: dict[str, Any] = {
            "model": model,
            "messages": [message.model_dump(exclude_none=True) for message in messages],
            "stream": True,
            **params,
        }
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    def parse_event(self, event: SSEEvent, report: StreamReport) -> ParseResult:
        if event.data == "[DONE]":
            return STREAM_END
        try:
            chunk = loads(event.data)
            if "error" in chunk:
                raise self.error_from_payload(chunk, status=None, model=chunk.get("model", "?"))
            if "choices" not in chunk and "usage" not in chunk:
                raise KeyError("choices")
            if chunk.get("usage"):
                report.usage = chunk["usage"]
            if not chunk.get("choices"):
                return None  # the usage-only chunk (choices empty, or null on vLLM)
            choice = chunk["choices"][0]
            if choice.get("finish_reason"):
                report.finish_reason = choice["finish_reason"]
            content = (choice.get("delta") or {}).get("content")
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            raise UpstreamProtocolError(
                f"malformed chunk ({type(error).__name__}: {error}): {excerpt(event.data)}",
                provider=self.entry_name,
            ) from None
        return content if isinstance(content, str) else None

    def classify_status_error(self, error: UpstreamStatusError, model: str) -> PolyrouteError:
        try:
            payload = loads(error.body)
        except ValueError:
            return error
        if not isinstance(payload, dict) or "error" not in payload:
            return error
        return self.error_from_payload(payload, error.status, model, error.retry_after)

    def error_from_payload(
        self,
        payload: dict[str, Any],
        status: int | None,
        model: str,
        retry_after: float | None = None,
    ) -> PolyrouteError:
        """The typed error for an OpenAI-style ``{"error": ...}`` object."""
        detail = payload["error"]
        message, code = str(detail), ""
        if isinstance(detail, dict):
            message = str(detail.get("message") or detail)
            code = detail.get("code") or detail.get("type") or ""
            if isinstance(code, bool) or not isinstance(code, str | int):
                code = ""  # a malformed code must not stop the error being reported
        if isinstance(code, int):  # OpenRouter puts the HTTP status in `code`
            status, code = status or code, ""
        text = message.lower()
        provider = self.entry_name
        if code in _CONTEXT_CODES or "context length" in text or "context window" in text:
            return ContextLengthExceededError(
                status or 400, provider=provider, body=message, retryable=False
            )
        if code == "model_not_found" or (status == 404 and "model" in text):
            return ModelNotSupportedError(model, provider=provider, detail=message)
        if code == "insufficient_quota":
            return RateLimitedError(status or 429, provider=provider, body=message, retryable=False)
        if status in (401, 403) or code == "invalid_api_key":
            return AuthenticationError(
                status or 401, provider=provider, body=message, retryable=False
            )
        if status == 429 or code == "rate_limit_exceeded":
            return RateLimitedError(
                status or 429, provider=provider, body=message, retry_after=retry_after
            )
        if status is not None:
            return UpstreamStatusError(
                status, provider=provider, body=message, retry_after=retry_after
            )
        return UpstreamError(f"error inside the stream: {message}", provider=provider)

    async def discover_models(self) -> list[str]:
        """Replace ``models`` with the ids listed by ``GET {base_url}/models``."""
        listing = await fetch_json(
            self._sessions.session,
            f"{self.base_url}/models",
            provider=self.entry_name,
            headers={k: v for k, v in self.headers.items() if k.lower() != "content-type"},
            proxy=self.proxy,
            timeouts=self.timeouts,
        )
        try:
            self.models = sorted(str(item["id"]) for item in listing["data"])
        except (KeyError, TypeError) as error:
            raise UpstreamProtocolError(
                f"malformed model list ({type(error).__name__}: {error})", provider=self.entry_name
            ) from None
        return self.models
