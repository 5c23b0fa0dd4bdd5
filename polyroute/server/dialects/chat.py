"""OpenAI's chat-completions wire format on the gateway's side: a request body in,
chunks or a whole completion out, and errors as OpenAI error objects."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from polyroute.core.deltas import AssistantMessage, Usage
from polyroute.core.errors import (
    AllProvidersFailed,
    AuthenticationError,
    CapabilityNotSupportedError,
    InvalidRequestError,
    ModelNotSupportedError,
    PolyrouteError,
    RateLimitedError,
    UpstreamError,
    UpstreamTimeout,
)
from polyroute.core.request import RequestOptions

# The keys of a chat-completions body the gateway reads itself or hands to the router
# by name; any other top-level key is a provider-specific one (the openai SDK's
# `extra_body` puts them there) and travels on in extra_body.
_OWN_KEYS = frozenset({"model", "messages", "stream", "stream_options"})
_OPTION_KEYS = frozenset(RequestOptions.model_fields) - {"extra_body"}


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A parsed chat-completions request."""

    model: str | None
    messages: Any
    stream: bool
    include_usage: bool
    options: dict[str, Any]


def read_chat_body(body: Any) -> ChatCall:
    """The request in ``body`` (decoded JSON); raises :class:`InvalidRequestError`
    naming the key that is wrong. Messages and options are checked by the router."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError("model must be a string")
    if "messages" not in body:
        raise InvalidRequestError("messages: a list of messages is required")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise InvalidRequestError("stream must be true or false")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise InvalidRequestError("stream_options must be an object")
    options = {key: value for key, value in body.items() if key in _OPTION_KEYS}
    extra = {key: value for key, value in body.items() if key not in _OWN_KEYS | _OPTION_KEYS}
    if isinstance(body.get("extra_body"), dict):  # sent literally by a client that nests it
        extra = {**extra.pop("extra_body"), **extra}
    if extra:
        options["extra_body"] = extra
    return ChatCall(
        model=model,
        messages=body["messages"],
        stream=bool(stream),
        include_usage=bool(stream_options.get("include_usage")),
        options=options,
    )


def completion(
    request_id: str,
    model: str,
    message: AssistantMessage,
    finish_reason: str | None,
    usage: Usage | None,
) -> dict[str, Any]:
    """A whole ``chat.completion`` object."""
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message_body(message),
                "logprobs": message.extra.get("logprobs"),
                "finish_reason": finish_reason or "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage.as_dict()
    return body


def message_body(message: AssistantMessage) -> dict[str, Any]:
    body = message.as_dict()
    if message.reasoning is not None:
        body["reasoning_content"] = message.reasoning
    body.update({k: v for k, v in message.extra.items() if k != "logprobs"})
    return body


@dataclass(frozen=True, slots=True)
class WireError:
    """An error as the gateway answers it: HTTP status and OpenAI error object."""

    status: int
    kind: str
    code: str | None
    message: str
    retry_after: float | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code}}


def wire_error(error: PolyrouteError) -> WireError:
    """The status and error object the official clients map to the matching
    exception class (400 BadRequest, 404 NotFound, 502/504 for upstream failures)."""
    message = (
        " ".join(str(error).split()) if not isinstance(error, AllProvidersFailed) else str(error)
    )
    if isinstance(error, CapabilityNotSupportedError):
        return WireError(400, "invalid_request_error", "unsupported_capability", message)
    if isinstance(error, InvalidRequestError):
        return WireError(400, "invalid_request_error", None, message)
    if isinstance(error, ModelNotSupportedError):
        return WireError(404, "invalid_request_error", "model_not_found", message)
    if isinstance(error, AllProvidersFailed):
        causes = [attempt.error for attempt in error.attempts]
        if causes and all(isinstance(cause, ModelNotSupportedError) for cause in causes):
            return WireError(404, "invalid_request_error", "model_not_found", message)
        if causes and all(isinstance(cause, UpstreamTimeout) for cause in causes):
            return WireError(504, "timeout", "upstream_timeout", message)
        return WireError(502, "upstream_error", "all_providers_failed", message)
    if isinstance(error, UpstreamTimeout):
        return WireError(504, "timeout", "upstream_timeout", message)
    if isinstance(error, RateLimitedError | AuthenticationError | UpstreamError):
        return WireError(502, "upstream_error", type(error).__name__, message)
    return WireError(500, "server_error", None, message)


def gateway_error(status: int, message: str, code: str | None = None) -> WireError:
    """An error of the gateway's own (bad JSON, body too large, unknown route...)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return WireError(status, kind, code, message)


def polyroute_facts(provider: str | None, model: str | None, attempts: int) -> Mapping[str, Any]:
    """What the gateway says of how an answer was served (headers, last chunk)."""
    return {"provider": provider, "model": model, "attempts": attempts}
