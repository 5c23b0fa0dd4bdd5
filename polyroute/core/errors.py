"""The whole polyroute exception tree.

Every exception carries its facts as attributes (``provider``, ``status``,
``retryable``, ``retry_after``...) so that callers and the router decide on
fields, never on message text. Messages are redacted: no API key or proxy
credential can leak through ``str(exc)`` or ``repr(exc)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from polyroute.core.redaction import redact
from polyroute.core.schema import did_you_mean

if TYPE_CHECKING:
    from polyroute.core.attempts import Attempt
    from polyroute.core.deltas import AssistantMessage


class PolyrouteError(Exception):
    """Base of every error polyroute raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        """The human-readable, redacted message."""
        return str(self.args[0]) if self.args else ""


class ConfigError(PolyrouteError, ValueError):
    """A configuration is invalid; the message names the offending key path."""


class InvalidRequestError(PolyrouteError, ValueError):
    """The caller's request is malformed; no provider would accept it, so none is tried."""


class InvalidMessagesError(InvalidRequestError):
    """The chat messages given to a provider or router are malformed."""


class BudgetExceededError(PolyrouteError):
    """A budget (a gateway key's or team's) has no room for what the request may cost:
    ``scope`` names it (``key:ci``, ``team:search``), ``remaining_usd`` is what is left
    in its period. Nothing was sent upstream."""

    def __init__(self, scope: str, remaining_usd: float, needed_usd: float) -> None:
        self.scope = scope
        self.remaining_usd = remaining_usd
        self.needed_usd = needed_usd
        super().__init__(
            f"budget exceeded: {scope} has ${remaining_usd:.6f} left this period, and this "
            f"request may cost up to ${needed_usd:.6f}"
        )


class ModelNotSupportedError(PolyrouteError, ValueError):
    """A provider (or the whole router) cannot serve the requested model.

    ``provider`` is ``None`` when the router as a whole knows no such model.
    """

    def __init__(
        self,
        model: str,
        *,
        provider: str | None = None,
        supported: Sequence[str] = (),
        detail: str | None = None,
    ) -> None:
        self.model = model
        self.provider = provider
        self.supported = list(supported)
        where = f"provider {provider!r}" if provider else "this router"
        if model:
            message = f"model {model!r} is not supported by {where}"
        else:
            message = f"no model given, and {where} has no default_model"
        if self.supported:
            message += f"; valid models: {', '.join(self.supported)}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class CapabilityNotSupportedError(InvalidRequestError):
    """The request needs what a provider (or, with ``provider=None``, every entry that
    serves the model) cannot do: ``capabilities`` lists ``tools``, ``vision`` or
    ``json_schema``."""

    def __init__(
        self, capabilities: Sequence[str], *, provider: str | None = None, model: str = ""
    ) -> None:
        self.capabilities = list(capabilities)
        self.provider = provider
        self.model = model
        labels = {
            "tools": "tool calls",
            "vision": "image, audio or file parts",
            "json_schema": "JSON-schema answers",
        }
        wanted = ", ".join(labels.get(name, name) for name in self.capabilities)
        if provider:
            where = f"provider {provider!r} does not support"
        else:
            for_model = f" for model {model!r}" if model else ""
            where = f"no provider{for_model} supports"
        super().__init__(f"{where} {wanted}, which this request needs")


class ProviderNotFoundError(PolyrouteError, LookupError):
    """No provider type of that name is registered."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = list(known)
        super().__init__(
            f"unknown provider {name!r}; known providers: {', '.join(self.known) or '(none)'}"
        )


class ProviderNotWorkingError(PolyrouteError):
    """The provider is flagged ``working = False`` and was asked to serve anyway."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        super().__init__(
            f"provider {provider!r} is marked as not working; "
            "set working: true in its configuration to use it anyway"
        )


class StreamNotSupportedError(PolyrouteError):
    """The provider cannot stream, and a stream was requested."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        super().__init__(f"provider {provider!r} does not support streaming")


class UpstreamError(PolyrouteError):
    """An upstream API failed. ``retryable`` says whether trying again may help."""

    default_retryable = True

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.provider = provider
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        where = f"{provider}: " if provider else ""
        super().__init__(f"{where}{message}")


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a non-2xx HTTP status.

    ``body`` holds a short excerpt of the response body, ``retry_after`` the parsed
    ``Retry-After`` header in seconds (``None`` when absent).
    """

    def __init__(
        self,
        status: int,
        *,
        provider: str | None = None,
        body: str = "",
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.status = status
        self.body = redact(body)
        if retryable is None:
            retryable = status in (408, 429) or status >= 500
        message = f"HTTP {status}"
        if body:
            short = self.body if len(self.body) <= 300 else f"{self.body[:300]}..."
            message += f": {short}"
        super().__init__(message, provider=provider, retryable=retryable, retry_after=retry_after)


class ContextLengthExceededError(UpstreamStatusError):
    """The conversation is too long for the model. Not retried on that provider;
    a fallback with a larger context may still serve it."""


class RateLimitedError(UpstreamStatusError):
    """HTTP 429: retry after ``retry_after`` seconds (when the upstream said)."""


class AuthenticationError(UpstreamStatusError):
    """HTTP 401/403: the credentials were refused. Never retried on the same provider."""


class UpstreamConnectionError(UpstreamError):
    """The connection could not be made or broke (refused, reset, DNS failure)."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The upstream did not answer in time (connect, first chunk, idle or total)."""


class UpstreamProtocolError(UpstreamError):
    """The upstream's data does not follow its wire format.

    Not retryable by default: the same upstream tends to send the same garbage.
    """

    default_retryable = False


class ToolCallInterruptedError(UpstreamError):
    """The upstream failed after part of a tool call had reached the consumer.

    A tool call cannot be spliced from two providers (its arguments would not be one
    JSON document), so the answer is not relayed: ``delivered`` is the message as far
    as it was delivered, ``__cause__`` the upstream's error. Route with
    ``tool_calls: atomic`` to have such failures relayed instead.
    """

    default_retryable = False

    def __init__(self, cause: UpstreamError, delivered: AssistantMessage) -> None:
        self.delivered = delivered
        super().__init__(
            "the answer broke off after a tool call had begun to stream, so it cannot be "
            f"continued elsewhere ({type(cause).__name__}: {cause})",
            provider=cause.provider,
        )


class AllProvidersFailed(PolyrouteError):
    """Every candidate provider (and every fallback model) failed.

    ``attempts`` lists each try in order, with its provider, model and error.
    """

    def __init__(
        self, model: str, attempts: Sequence[Attempt], reasons: Sequence[str] = ()
    ) -> None:
        self.model = model
        self.attempts = list(attempts)
        self.reasons = list(reasons)
        lines = [f"all providers failed for model {model!r}"]
        lines += [f"  - {attempt.describe()}" for attempt in self.attempts]
        lines += [f"  - {reason}" for reason in self.reasons]
        if not self.attempts and not self.reasons:
            lines.append("  - no provider was tried")
        super().__init__("\n".join(lines))

    def by_entry(self) -> list[str]:
        """Each entry tried, once, in order: its last error and how many attempts it had
        (``dead: UpstreamConnectionError (cannot connect to URL: connection refused), 2
        attempts``)."""
        by_entry: dict[str, list[BaseException | None]] = {}
        for attempt in self.attempts:
            by_entry.setdefault(attempt.provider, []).append(attempt.error)
        lines = []
        for name, errors in by_entry.items():
            last = errors[-1]
            what = type(last).__name__ if last is not None else "no error"
            if isinstance(last, UpstreamConnectionError | UpstreamTimeout):
                what += f" ({str(last).removeprefix(f'{name}: ')})"
            count = f", {len(errors)} attempts" if len(errors) > 1 else ""
            lines.append(f"{name}: {what}{count}")
        return lines


def describe_validation_error(
    error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> str:
    """One line per problem of a pydantic error: ``prefix`` + key path, then what is
    wrong; with ``model``, an unknown key gets the closest known one as a suggestion."""
    problems = []
    for item in error.errors():
        # A discriminated union repeats its tag in the path (tools.0.function.function):
        # a key never nests in a key of its own name here, so the repeat is dropped.
        parts = [str(part) for part in item["loc"]]
        path = ".".join(p for i, p in enumerate(parts) if not i or p != parts[i - 1])
        path = path or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key" + (did_you_mean(model, item["loc"]) if model else "")
        problems.append(f"{prefix}{path}: {message}")
    return "; ".join(problems)


def describe_error(error: BaseException) -> dict[str, Any]:
    """Fields of ``error`` fit for a structured log event (type, message, retryable)."""
    return {
        "error_type": type(error).__name__,
        "error": redact(str(error)),
        "retryable": getattr(error, "retryable", False),
    }
