"""What a request's spans and metrics say: names and attributes, made from its record
and from what its watch saw of each attempt (OpenTelemetry's GenAI semantic
conventions, https://opentelemetry.io/docs/specs/semconv/gen-ai/, and ``polyroute.*``
for what they have no name for). Plain data: no part of OpenTelemetry is imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import orjson

from polyroute.core.attempts import Attempt
from polyroute.core.redaction import redact
from polyroute.router.observe import AttemptRecord, AttemptTarget, RequestRecord

Attributes: TypeAlias = dict[str, str | bool | int | float | Sequence[str]]

PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini"}
"""``gen_ai.provider.name``: the well-known name of an entry's wire format, by its
provider type; another type (``darkai``, ``simulated``, a plugin's) is named as is."""

SERVER_ROUTES = {
    "chat": "/v1/chat/completions",
    "messages": "/v1/messages",
    "responses": "/v1/responses",
    "embeddings": "/v1/embeddings",
}
"""The gateway's route of each endpoint a record names (docs/observability.md)."""

ROUTING_EVENTS = frozenset(
    {
        "attempt.retry",
        "attempt.hedge",
        "attempt.hedge_lost",
        "route.skip",
        "route.relay",
        "route.next_provider",
        "route.fallback",
        "route.prefill_refused",
        "retry.budget_exhausted",
        "provider.cooldown",
    }
)
"""The routing events that become events of the request's span (the others are told
by the spans themselves: an attempt's start, failure and end)."""


@dataclass(slots=True)
class SeenAttempt:
    """An attempt as a watch saw it start: the live record (its usage and finish
    reason are read once it ended), where it went, and its span's id."""

    attempt: Attempt
    target: AttemptTarget
    span_id: int


def operation_of(endpoint: str) -> str:
    """``gen_ai.operation.name`` of a record's endpoint (every dialect's is a chat)."""
    return "embeddings" if endpoint == "embeddings" else "chat"


def request_name(record: RequestRecord, server: bool) -> str:
    """The request span's name: ``POST /v1/chat/completions`` in a gateway (an HTTP
    server span's route), ``chat m`` for a library call."""
    route = SERVER_ROUTES.get(record.endpoint) if server else None
    if route is not None:
        return f"POST {route}"
    return f"{operation_of(record.endpoint)} {record.model}".rstrip()


def request_attributes(record: RequestRecord, server: bool) -> Attributes:
    """The request's outcome: how it ended and what served it. (Few attributes: each
    costs the SDK and its exporter some microseconds, on every request. What an
    attempt's span says, such as the upstream model or the tokens, is not repeated.)"""
    attributes: Attributes = {
        "polyroute.request.id": record.id,
        "polyroute.model": record.model,
        "polyroute.status": record.status,
        "polyroute.attempts": len(record.attempts),
    }
    for name, value in (
        ("polyroute.entry", record.provider),
        ("polyroute.key", record.key),
        ("polyroute.team", record.team),
        ("polyroute.cache", record.cache),
        ("polyroute.cost_usd", record.cost_usd),
        ("error.type", record.error_type),
    ):
        if value is not None:
            attributes[name] = value
    route = SERVER_ROUTES.get(record.endpoint)
    if server and route is not None:
        attributes["http.request.method"] = "POST"
        attributes["http.route"] = route
    if record.content is not None:
        attributes.update(content_attributes(record.content, record.finish_reason))
    return attributes


def attempt_name(operation: str, attempt: AttemptRecord) -> str:
    """An attempt span's name: the operation and the upstream model (``chat gpt-4o``)."""
    return f"{operation} {attempt.model}"


def attempt_attributes(
    operation: str,
    attempt: AttemptRecord,
    seen: SeenAttempt | None,
    options: Mapping[str, Any],
) -> Attributes:
    """The GenAI attributes of one attempt (its usage and finish reason when a watch
    saw it: the record keeps only the request's sums), and what polyroute adds: the
    entry, the time to the first chunk, and how it ended when not ``ok``, the
    characters it delivered and where it took over for a relay."""
    attributes: Attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": attempt.model,
        "polyroute.entry": attempt.provider,
    }
    attributes.update(_upstream(seen.target if seen is not None else None))
    if options:
        attributes.update(_request_options(options))
    if attempt.ttft_ms is not None:
        # What answered: the model asked (polyroute does not read a name from answers).
        attributes["gen_ai.response.model"] = attempt.model
        attributes["polyroute.attempt.ttft_ms"] = attempt.ttft_ms
    if attempt.outcome != "ok":
        attributes["polyroute.attempt.outcome"] = attempt.outcome
        attributes["polyroute.attempt.chars"] = attempt.chars
    if attempt.relay_offset:
        attributes["polyroute.attempt.relay_offset"] = attempt.relay_offset
    if attempt.error_type is not None:
        attributes["error.type"] = attempt.error_type
    if attempt.status_code is not None:
        attributes["http.response.status_code"] = attempt.status_code
    if seen is not None:
        live = seen.attempt
        if live.finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = (live.finish_reason,)
        if live.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = live.usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = live.usage.completion_tokens
    return attributes


def event_attributes(fields: Mapping[str, Any]) -> Attributes:
    """A routing event's fields as span event attributes: scalars and lists of text as
    they are, texts masked as the event log masks them, the rest left out."""
    attributes: Attributes = {}
    for name, value in fields.items():
        if isinstance(value, str):
            attributes[name] = redact(value)
        elif isinstance(value, bool | int | float):
            attributes[name] = value
        elif isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            attributes[name] = tuple(redact(item) for item in value)
    return attributes


def content_attributes(content: Mapping[str, Any], finish_reason: str | None) -> Attributes:
    """``gen_ai.input.messages`` and ``gen_ai.output.messages`` (JSON, the GenAI
    conventions' shape: a role and its parts) of a record's content; only a record
    made with ``log_content`` has any. Embeddings' inputs have no such attribute."""
    messages = content.get("messages")
    answer = content.get("answer")
    if not isinstance(messages, list) or not isinstance(answer, Mapping):
        return {}
    inputs = [_message(message) for message in messages if isinstance(message, Mapping)]
    output = {**_message(answer), "finish_reason": finish_reason or "stop"}
    return {
        "gen_ai.input.messages": orjson.dumps(inputs).decode(),
        "gen_ai.output.messages": orjson.dumps([output]).decode(),
    }


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    """One message of OpenAI's shape as the conventions' ``{role, parts}``."""
    parts: list[dict[str, Any]] = []
    if reasoning := message.get("reasoning"):
        parts.append({"type": "reasoning", "content": reasoning})
    body = message.get("content")
    if isinstance(body, str):
        if body:
            parts.append({"type": "text", "content": body})
    elif isinstance(body, list):
        for part in body:
            if isinstance(part, Mapping) and part.get("type") == "text":
                parts.append({"type": "text", "content": part.get("text", "")})
            elif isinstance(part, Mapping):
                parts.append({"type": str(part.get("type", "unknown"))})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": function.get("name"),
                "arguments": function.get("arguments"),
            }
        )
    if message.get("role") == "tool":
        parts = [{"type": "tool_call_response", "id": message.get("tool_call_id"),
                  "response": body}]  # fmt: skip
    return {"role": message.get("role"), "parts": parts}


def _upstream(target: AttemptTarget | None) -> Attributes:
    """``gen_ai.provider.name`` and ``server.address``/``server.port`` of a target."""
    return _NO_ATTRIBUTES if target is None else _target_attributes(target)


_NO_ATTRIBUTES: Attributes = {}


@lru_cache(maxsize=256)
def _target_attributes(target: AttemptTarget) -> Attributes:
    """As :func:`_upstream` (targets are few: made once each; read, never changed)."""
    kind = target.provider_type
    attributes: Attributes = {}
    if kind is not None:
        attributes["gen_ai.provider.name"] = PROVIDER_NAMES.get(kind, kind)
    if target.url and (server := server_of(target.url)) is not None:
        attributes["server.address"], attributes["server.port"] = server
    return attributes


@lru_cache(maxsize=256)
def server_of(url: str) -> tuple[str, int] | None:
    """The host and port of an entry's URL (few: parsed once each)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _request_options(options: Mapping[str, Any]) -> Attributes:
    """The request options the conventions name, when the request set them."""
    attributes: Attributes = {}
    max_tokens = options.get("max_completion_tokens") or options.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        attributes["gen_ai.request.max_tokens"] = max_tokens
    temperature = options.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        attributes["gen_ai.request.temperature"] = float(temperature)
    dimensions = options.get("dimensions")
    if isinstance(dimensions, int) and not isinstance(dimensions, bool):
        attributes["gen_ai.embeddings.dimension.count"] = dimensions
    return attributes
