"""How a failure is told to a client: which HTTP status, and which facts; each dialect
renders them as its own error object."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from polyroute.core.errors import (
    AllProvidersFailed,
    AuthenticationError,
    BudgetExceededError,
    CapabilityNotSupportedError,
    GatewayOverloaded,
    InvalidRequestError,
    ModelNotSupportedError,
    PolyrouteError,
    RateLimitedError,
    RequestTimeoutError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    clipped,
)


@dataclass(frozen=True, slots=True)
class WireError:
    """An error as the gateway answers it: the HTTP status and the dialect's body."""

    status: int
    body: dict[str, Any]
    retry_after: float | None = None
    code: str | None = None
    """The error's code, for the access log."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A failure classified: status, OpenAI's error ``kind`` and ``code``, the message."""

    status: int
    kind: str
    code: str | None
    message: str
    retry_after: float | None = None
    overloaded: bool = False
    """Every candidate was rate-limited or overloaded (Anthropic's clients expect 529)."""
    param: str | None = None
    """The request's field at fault, when one is (OpenAI's ``param``)."""


def classify(error: PolyrouteError) -> Failure:
    """The status the official clients map to the matching exception class (400
    BadRequest, 404 NotFound, 502/504 for upstream failures)."""
    message = (
        " ".join(str(error).split()) if not isinstance(error, AllProvidersFailed) else str(error)
    )
    message = clip_message(message)
    if (own := _own_trouble(error)) is not None:
        return Failure(503, "server_error", "gateway_overloaded", message, own.retry_after)
    if isinstance(error, RequestTimeoutError):
        return Failure(408, "invalid_request_error", "request_timeout", message)
    if isinstance(error, CapabilityNotSupportedError):
        return Failure(400, "invalid_request_error", "unsupported_capability", message)
    if isinstance(error, BudgetExceededError):
        return Failure(429, "insufficient_quota", "budget_exceeded", message)
    if isinstance(error, InvalidRequestError):
        return Failure(400, "invalid_request_error", None, message)
    if isinstance(error, ModelNotSupportedError):
        return Failure(404, "invalid_request_error", "model_not_found", message)
    if isinstance(error, AllProvidersFailed):
        causes = [attempt.error for attempt in error.attempts]
        if causes and all(isinstance(cause, ModelNotSupportedError) for cause in causes):
            return Failure(404, "invalid_request_error", "model_not_found", message)
        if causes and all(isinstance(cause, UpstreamTimeout) for cause in causes):
            return Failure(504, "timeout", "upstream_timeout", message)
        overloaded = bool(causes) and all(_is_overloaded(cause) for cause in causes)
        return Failure(502, "upstream_error", "all_providers_failed", message, None, overloaded)
    if isinstance(error, UpstreamTimeout):
        return Failure(504, "timeout", "upstream_timeout", message)
    if isinstance(error, RateLimitedError | AuthenticationError | UpstreamError):
        return Failure(
            502, "upstream_error", error_code(error), message, None, _is_overloaded(error)
        )
    return Failure(500, "server_error", None, message)


def _own_trouble(error: PolyrouteError) -> GatewayOverloaded | None:
    """The gateway's own trouble that stopped the request, if any stopped it: then it
    is a 503 to retry, not an upstream's failure (whatever the entries tried before)."""
    if isinstance(error, GatewayOverloaded):
        return error
    if isinstance(error, AllProvidersFailed):
        causes = (attempt.error for attempt in error.attempts)
        return next((cause for cause in causes if isinstance(cause, GatewayOverloaded)), None)
    return None


MESSAGE_LIMIT = 4000
"""The longest error message sent (a whole failure of several entries fits)."""
_LONG_RUN = re.compile(r"\S{201,}")


def clip_message(message: str) -> str:
    """``message`` with any run of over 200 characters without a space (a client's
    value echoed back: a model name, a role) cut to 200, and the whole to
    :data:`MESSAGE_LIMIT`."""
    if len(message) > 200:
        message = _LONG_RUN.sub(lambda run: clipped(run.group(), 200), message)
    return clipped(message, MESSAGE_LIMIT)


def error_code(error: BaseException) -> str:
    """The ``code`` of an upstream's failure: its class name in snake_case, as every
    other code is (``UpstreamConnectionError`` -> ``upstream_connection_error``)."""
    return _WORD_START.sub("_", type(error).__name__).lower()


_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def own_failure(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> Failure:
    """A failure of the gateway's own (bad JSON, body too large, unknown route...)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return Failure(status, kind, code, clip_message(message), param=param)


def _is_overloaded(error: BaseException | None) -> bool:
    if isinstance(error, RateLimitedError):
        return True
    return isinstance(error, UpstreamStatusError) and error.status in (503, 529)


def openai_error(failure: Failure) -> WireError:
    """``failure`` as OpenAI's error object (chat completions and responses)."""
    error = {"message": failure.message, "type": failure.kind, "param": failure.param}
    body = {"error": {**error, "code": failure.code}}
    return WireError(failure.status, body, failure.retry_after, failure.code)
