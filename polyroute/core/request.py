"""One chat request, checked once at the edge: messages, options, and what it needs
from a provider (tools, images, JSON schemas).

Options use OpenAI's names. Provider-specific keys (``top_k``, ``min_p``...) go in
``extra_body`` and are merged into the upstream's JSON untouched, as the openai SDK
does; any other unknown keyword is an :class:`InvalidRequestError`, raised before a
single byte is sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple, TypeAlias

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polyroute.core.errors import InvalidRequestError, describe_validation_error
from polyroute.core.messages import Message, Messages, lone_surrogate_in, normalize_messages
from polyroute.core.schema import StrictModel

Capability: TypeAlias = Literal["tools", "vision", "json_schema", "embeddings"]
CAPABILITY_FLAGS: dict[Capability, str] = {
    "tools": "supports_tools",
    "vision": "supports_vision",
    "json_schema": "supports_json_schema",
    "embeddings": "supports_embeddings",
}
"""Each capability a request may need, and the provider flag that says it is there."""
CAPABILITY_LABELS: dict[Capability, str] = {
    "tools": "no tool support",
    "vision": "no support for image, audio or file parts",
    "json_schema": "no JSON-schema answers",
    "embeddings": "no embeddings",
}


class _Open(BaseModel):
    # Tool and schema definitions keep every key: the upstream reads them, not us.
    model_config = ConfigDict(extra="allow", frozen=True)


class FunctionSpec(_Open):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(_Open):
    type: Literal["function"]
    function: FunctionSpec


class CustomSpec(_Open):
    name: str = Field(min_length=1)
    description: str | None = None
    format: dict[str, Any] | None = None


class CustomToolSpec(_Open):
    """A tool whose input is free-form text rather than JSON arguments (OpenAI's
    ``custom`` tools). Its calls travel as function calls whose arguments are
    ``{"input": "<the text>"}``: upstreams without custom tools take it as a function
    of that one string argument."""

    type: Literal["custom"]
    custom: CustomSpec


AnyToolSpec: TypeAlias = Annotated[ToolSpec | CustomToolSpec, Field(discriminator="type")]


class NamedTool(_Open):
    type: Literal["function"]
    function: dict[str, str]


class NamedCustomTool(_Open):
    type: Literal["custom"]
    custom: dict[str, str]


class JSONSchemaSpec(_Open):
    name: str = Field(min_length=1)
    schema_: dict[str, Any] | None = Field(None, alias="schema")


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None


class RequestOptions(StrictModel):
    """Every option the router and the OpenAI-format providers take, with its range."""

    tools: list[AnyToolSpec] | None = None
    tool_choice: (
        Literal["none", "auto", "required"]
        | Annotated[NamedTool | NamedCustomTool, Field(discriminator="type")]
        | None
    ) = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    n: Literal[1] | None = Field(None, description="one answer per request: a stream has one")
    user: str | None = None
    metadata: dict[str, str] | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    extra_body: dict[str, Any] | None = None


_OPTION_NAMES = frozenset(RequestOptions.model_fields)


def check_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` validated (types and ranges), as a new dict of the values given.

    Raises :class:`InvalidRequestError` naming each bad option (unknown, wrong type,
    out of range), and pointing unknown ones at ``extra_body``.
    """
    unknown = sorted(set(params) - _OPTION_NAMES)
    if unknown:
        raise InvalidRequestError(
            f"unknown request parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}; provider-specific keys go in extra_body={{...}}, "
            f"which is merged into the upstream request as it is"
        )
    try:
        # Strict: "0.5" is no temperature. The values go upstream as the caller gave
        # them (validated, not re-serialized: tools keep every key they had).
        RequestOptions.model_validate(params, strict=True)
    except ValidationError as error:
        if any(item["loc"][:1] == ("n",) for item in error.errors()):
            raise InvalidRequestError(
                f"n={params['n']!r}: polyroute streams one answer per request (n=1); "
                "send several requests for several answers"
            ) from None
        raise InvalidRequestError(
            f"invalid request parameters: {describe_validation_error(error)}"
        ) from None
    checked = dict(params)
    if (where := lone_surrogate_in(checked)) is not None:
        raise InvalidRequestError(f"invalid request parameters: {where}")
    for name in ("extra_body", "metadata"):
        if name in checked:
            try:
                orjson.dumps(checked[name])
            except TypeError as error:
                raise InvalidRequestError(f"{name} is not JSON-serializable: {error}") from None
    return checked


@dataclass(frozen=True, slots=True)
class NativeRequest:
    """A request as its client sent it, in one upstream's wire format (``format``:
    ``"anthropic"`` for Anthropic's Messages API), beside its translation to the chat
    shape. A provider that speaks ``format`` sends ``body`` (with its own model name)
    rather than the translation, so that what the translation cannot carry (thinking
    signatures, ``cache_control``, beta features) reaches it unchanged.

    ``headers`` are the client's headers that such a provider passes on
    (``anthropic-beta``); ``lost`` names what the translation leaves out, which every
    entry of another format drops (and says so).
    """

    format: str
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    lost: tuple[str, ...] = ()


class ChatRequest(NamedTuple):
    """A validated request: ``options`` in OpenAI's names (``extra_body`` kept apart),
    ``needs`` the capabilities a provider must have to serve it, ``native`` the
    client's own request when it came in an upstream's format. (A tuple: one is made
    per request, and a frozen dataclass costs several times more to build.)"""

    messages: list[Message]
    options: dict[str, Any]
    extra_body: dict[str, Any]
    needs: frozenset[Capability]
    native: NativeRequest | None = None

    @classmethod
    def build(
        cls, messages: Messages, params: Mapping[str, Any], native: NativeRequest | None = None
    ) -> ChatRequest:
        """Validate ``messages`` and ``params``; raises :class:`InvalidRequestError`
        (or its subclass :class:`InvalidMessagesError`)."""
        checked = normalize_messages(messages)
        options = check_options(params) if params else {}
        extra_body = options.pop("extra_body", None) or {}
        return cls(checked, options, extra_body, _needs(checked, options), native)


_NO_NEEDS: frozenset[Capability] = frozenset()


def _needs(messages: list[Message], options: dict[str, Any]) -> frozenset[Capability]:
    plain = all(
        type(message.content) is str and message.tool_calls is None and message.role != "tool"
        for message in messages
    )
    if plain and not options.get("tools") and not options.get("response_format"):
        return _NO_NEEDS  # the common case (max_tokens alone too), decided without a set
    needs: set[Capability] = set()
    if options.get("tools") or any(message.uses_tools for message in messages):
        needs.add("tools")
    if any(message.has_media for message in messages):
        needs.add("vision")
    if (options.get("response_format") or {}).get("type") == "json_schema":
        needs.add("json_schema")
    return frozenset(needs)


CHARS_PER_TOKEN = 4.5
"""The estimate's ratio. Measured on English prose (tests/core/test_token_estimate.py),
today's tokenizers (Mistral's Tekken, OpenAI's o200k and cl100k, Claude's) agree
within a few per cent at about 4.7 characters a token; 4.5 keeps every sample within
25% (0.97 to 1.21 of the real count), erring towards more tokens."""


def estimated_input_tokens(request: ChatRequest) -> int:
    """Tokens ``request`` sends, estimated from its characters: message text, tool
    definitions and a structured output schema (images and files are not counted)."""
    chars = sum(len(message.text()) for message in request.messages)
    for name in ("tools", "response_format"):
        if value := request.options.get(name):
            chars += len(orjson.dumps(value))
    return math.ceil(chars / CHARS_PER_TOKEN)
