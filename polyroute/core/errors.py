"""The whole polyroute exception tree.

Every exception carries its facts as attributes (``provider``, ``status``,
``retryable``, ``retry_after``...) so that callers and the router decide on
fields, never on message text. Messages are redacted: no API key or proxy
credential can leak through ``str(exc)`` or ``repr(exc)``.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


class PortInUseError(ConfigError):
    """Another process listens on ``port`` at ``host``: the gateway or a simulated
    upstream cannot take it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        super().__init__(f"port {port} on {host} is in use; pass --port N")


@contextmanager
def refusals_to_listen(host: str, port: int) -> Iterator[None]:
    """Turn the operating system's refusal to listen on ``host:port`` into one sentence:
    :class:`PortInUseError` for a port taken, :class:`ConfigError` for any other (an
    address not of this machine, a port below 1024 without the right)."""
    try:
        yield
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port) from None
        # asyncio's message repeats the address: the system's words alone say why.
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ConfigError(f"cannot listen on {host} port {port}: {reason.lower()}") from None


class InvalidRequestError(PolyrouteError, ValueError):
    """The caller's request is malformed; no provider would accept it, so none is tried."""


class InvalidMessagesError(InvalidRequestError):
    """The chat messages given to a provider or router are malformed."""


class RequestTimeoutError(InvalidRequestError):
    """The client did not send its whole request within the gateway's time for it
    (``gateway.body_timeout_s``): answered 408, and the connection is closed."""


class GatewayOverloaded(PolyrouteError):
    """The gateway itself could not serve the request now, through no fault of an
    upstream: it had no file descriptor left (``cause="file_descriptors"``), waited past
    a timeout for a connection slot of its own to an entry (``"connection_slot"``), or
    its event loop was too far behind to see an upstream's first chunk in time
    (``"loop_lag"``). ``provider`` names the entry being tried, which is not at fault:
    such a failure never counts against an entry's health or circuit, and the request
    is not tried on another entry (it would fare no better). Answered 503 with
    ``Retry-After: retry_after``."""

    def __init__(
        self, message: str, *, cause: str, provider: str | None = None, retry_after: float = 1.0
    ) -> None:
        self.cause = cause
        self.provider = provider
        self.retry_after = retry_after
        where = f"{provider}: " if provider else ""
        super().__init__(f"{where}the gateway is overloaded: {message}; retry shortly")


def clipped(text: str, limit: int = 200) -> str:
    """``text`` as an error message may echo it back: whole up to ``limit`` characters,
    else its start and how much was cut (a client's 1 MB model name is not repeated)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


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
            message = f"model {clipped(model)!r} is not supported by {where}"
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
        close = difflib.get_close_matches(name, self.known, n=1, cutoff=0.6)
        guess = f" (did you mean `{close[0]}`?)" if close else ""
        super().__init__(
            f"unknown provider {name!r}{guess}; "
            f"known providers: {', '.join(self.known) or '(none)'}"
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

    ``url`` is the URL that answered (without its query string; ``None`` when the error
    was not made from an HTTP answer), ``body`` a short excerpt of the response body,
    ``retry_after`` the parsed ``Retry-After`` header in seconds (``None`` when absent).
    """

    def __init__(
        self,
        status: int,
        *,
        provider: str | None = None,
        body: str = "",
        retry_after: float | None = None,
        retryable: bool | None = None,
        url: str | None = None,
    ) -> None:
        self.status = status
        self.body = redact(body)
        self.url = redact(url) if url else None
        if retryable is None:
            retryable = status in (408, 429) or status >= 500
        super().__init__(
            self._summary(), provider=provider, retryable=retryable, retry_after=retry_after
        )

    def _summary(self) -> str:
        message = f"HTTP {self.status}"
        if self.url:
            message += f" from {self.url}"
        if self.body:
            short = self.body if len(self.body) <= 300 else f"{self.body[:300]}..."
            message += f": {short}"
        return message

    def locate(self, url: str) -> None:
        """Name the URL that answered. A provider that reads a status error's body (a
        missing model, a context too long) makes a new error, which has no URL until
        it is given the HTTP layer's here."""
        self.url = redact(url)
        where = f"{self.provider}: " if self.provider else ""
        self.args = (redact(f"{where}{self._summary()}"),)


class ContextLengthExceededError(UpstreamStatusError):
    """The conversation is too long for the model. Not retried on that provider;
    a fallback with a larger context may still serve it."""


class RateLimitedError(UpstreamStatusError):
    """HTTP 429: retry after ``retry_after`` seconds (when the upstream said)."""


class AuthenticationError(UpstreamStatusError):
    """HTTP 401/403: the credentials were refused. Never retried on the same provider."""


class PrefillRefusedError(UpstreamStatusError):
    """HTTP 400: the model refuses a conversation that ends with an assistant turn (a
    continuation by prefill; Claude Sonnet/Opus 4.6 and later). Not retryable as it
    was sent: the router asks again at once by instruction, and remembers the model."""


class UpstreamConnectionError(UpstreamError):
    """The connection could not be made or broke (refused, reset, DNS failure).

    ``broke_off`` is true when the upstream closed it in the middle of an answer.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        broke_off: bool = False,
    ) -> None:
        self.broke_off = broke_off
        super().__init__(message, provider=provider, retryable=retryable, retry_after=retry_after)

    @classmethod
    def closed_mid_answer(
        cls, provider: str | None, chars: int | None = None
    ) -> UpstreamConnectionError:
        """The upstream closed the connection before the answer's end; ``chars``, when
        known (the router counts them), is how much of the answer had arrived."""
        when = "before the end of the answer" if chars is None else f"after {chars} characters"
        return cls(f"the upstream closed the connection {when}", provider=provider, broke_off=True)

    def after_chars(self, chars: int) -> UpstreamConnectionError:
        """This error, saying how many characters had arrived when it is a connection
        closed mid-answer (chained to it); itself otherwise."""
        if not self.broke_off:
            return self
        counted = self.closed_mid_answer(self.provider, chars)
        counted.__cause__ = self
        return counted


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
            f"continued elsewhere ({cause_of(cause)})",
            provider=cause.provider,
        )


class AllProvidersFailed(PolyrouteError):
    """Every candidate provider (and every fallback model) failed.

    ``attempts`` lists each try in order, with its provider, model and error;
    ``reasons`` why entries were not tried. The message names each entry once, with
    its model, the number of its attempts and what went wrong::

        all providers failed for model 'm'
          - always503 (m, 2 attempts): HTTP 503 from http://127.0.0.1:8081/v1/chat/completions
          - dead (m): cannot connect to http://127.0.0.1:9/chat: connection refused
    """

    def __init__(
        self, model: str, attempts: Sequence[Attempt], reasons: Sequence[str] = ()
    ) -> None:
        self.model = model
        self.attempts = list(attempts)
        self.reasons = list(reasons)
        lines = [f"all providers failed for model {model!r}"]
        lines += [f"  - {line}" for line in _grouped(self.attempts, with_model=True)]
        lines += [f"  - {reason}" for reason in self.reasons]
        if not self.attempts and not self.reasons:
            lines.append("  - no provider was tried")
        super().__init__("\n".join(lines))

    def by_entry(self) -> list[str]:
        """Each entry tried, once, in order: how many attempts it had and what went
        wrong (``dead (2 attempts): cannot connect to URL: connection refused``)."""
        return _grouped(self.attempts, with_model=False)


def _grouped(attempts: Sequence[Attempt], *, with_model: bool) -> list[str]:
    """One line per entry (and model, ``with_model``): its attempts counted, their
    distinct causes in order."""
    groups: dict[tuple[str, str], list[Attempt]] = {}
    for attempt in attempts:
        key = (attempt.provider, attempt.model if with_model else "")
        groups.setdefault(key, []).append(attempt)
    lines = []
    for (name, model), tries in groups.items():
        facts = [model] if model else []
        if len(tries) > 1:
            facts.append(f"{len(tries)} attempts")
        head = f"{name} ({', '.join(facts)})" if facts else name
        causes = dict.fromkeys(cause_of(a.error) if a.error else a.outcome for a in tries)
        lines.append(f"{head}: {', then '.join(causes)}")
    return lines


def cause_of(error: BaseException) -> str:
    """What went wrong, on one line, without the provider name an upstream error's
    message starts with (the caller names the entry)."""
    text = " ".join(str(error).split())
    provider = getattr(error, "provider", None)
    if isinstance(error, UpstreamError | GatewayOverloaded) and provider:
        text = text.removeprefix(f"{provider}: ")
    return text or type(error).__name__


def describe_validation_error(
    error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> str:
    """One line per problem of a pydantic error: ``prefix`` + key path, then what is
    wrong; with ``model``, an unknown key gets the closest known one as a suggestion.
    A value that fits none of a union's types is one sentence (``models: expected a
    list or 'discover', got 'gpt-4o'``), not one line per type tried."""
    items = error.errors()
    sites = _union_sites(items)
    problems: dict[str, list[str]] = {}
    wrong_types: dict[tuple[Any, ...], list[Any]] = {}
    inside: set[tuple[Any, ...]] = set()
    for item in items:
        loc = tuple(item["loc"])
        tags = {i for i in range(1, len(loc)) if loc[:i] in sites and isinstance(loc[i], str)}
        bare = tuple(part for i, part in enumerate(loc) if i not in tags)
        if len(loc) - 1 in tags and _is_type_error(item):
            wrong_types.setdefault(bare, []).append(item)
            problems.setdefault(_path(bare), [])
            continue
        # A problem inside a value of one of the union's types (a list with a number
        # in it): the value had that type, so the others' complaints are dropped.
        inside.update(bare[:i] for i in range(len(bare)))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key" + (did_you_mean(model, bare) if model else "")
        problems.setdefault(_path(bare), []).append(message)
    for bare, branches in wrong_types.items():
        if bare not in inside:
            problems[_path(bare)].insert(0, _wrong_type(branches))
    lines = [f"{prefix}{path}: {text}" for path, texts in problems.items() for text in texts]
    return "; ".join(lines)


def _path(loc: Sequence[int | str]) -> str:
    # A discriminated union repeats its tag in the path (tools.0.function.function):
    # a key never nests in a key of its own name here, so the repeat is dropped.
    parts = [str(part) for part in loc]
    path = ".".join(p for i, p in enumerate(parts) if not i or p != parts[i - 1])
    return path or "(top level)"


# The names pydantic gives a union's types in an error's location (list[str],
# literal['discover'], float, function-after[...]), which are no keys of the config.
_TYPE_TAG = re.compile(r"[a-z][a-z-]*\[.*\]|str|int|float|bool|bytes|none")
_TYPE_ERRORS = {
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


def _union_sites(items: Sequence[Any]) -> set[tuple[Any, ...]]:
    """The locations of the values validated against a union: where the next part of
    some error's location is one of the union's types (a model by its class name)."""
    sites = set()
    for item in items:
        loc = tuple(item["loc"])
        for i in range(1, len(loc)):
            part = loc[i]
            named_model = i == len(loc) - 1 and item["type"] == "model_type"
            if not isinstance(part, str):
                continue
            if _TYPE_TAG.fullmatch(part) or (
                named_model and part == (item.get("ctx") or {}).get("class_name")
            ):
                sites.add(loc[:i])
    return sites


def _is_type_error(item: Any) -> bool:
    return item["type"] in _TYPE_ERRORS or item["type"] == "literal_error"


def _expected(item: Any) -> str:
    if item["type"] == "literal_error":
        return str((item.get("ctx") or {}).get("expected", item["msg"]))
    return _TYPE_ERRORS[item["type"]]


def _wrong_type(branches: list[Any]) -> str:
    """The sentence for a value none of a union's types takes."""
    expected = list(dict.fromkeys(map(_expected, branches)))
    value = branches[0]["input"]
    shown = _shown(value)
    message = f"expected {' or '.join(expected)}, got {shown}"
    if "a list" in expected and isinstance(value, str):
        message += f" (a list of one is written [{json.dumps(value)}])"
    return message


def _shown(value: Any) -> str:
    """``value`` as it would be written in a config file, or what kind of thing it is."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else f"{value[:60]!r}..."
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def describe_error(error: BaseException) -> dict[str, Any]:
    """Fields of ``error`` fit for a structured log event (type, message, retryable)."""
    return {
        "error_type": type(error).__name__,
        "error": redact(str(error)),
        "retryable": getattr(error, "retryable", False),
    }
