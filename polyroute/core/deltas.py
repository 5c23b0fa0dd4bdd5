"""The typed items a stream carries, from provider to router to consumer, and the
assistant message they add up to.

A provider turns each upstream event into zero or more deltas; the router passes them
on (holding some back, see ``tool_calls: atomic``) and a :class:`MessageBuilder` adds
them up into an :class:`AssistantMessage`. Delta classes are small ``__slots__``
classes rather than frozen dataclasses or pydantic models: one is made per chunk on
the hot path, and a plain slotted ``__init__`` is the cheapest typed object Python has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

from polyroute.core.jsoncodec import loads


class _Delta:
    __slots__ = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._fields())
        return f"{type(self).__name__}({fields})"

    def _fields(self) -> list[tuple[str, Any]]:
        names: tuple[str, ...] = self.__slots__
        return [(name, getattr(self, name)) for name in names]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable: equal by value, so unhashable


class TextDelta(_Delta):
    """The next piece of the answer's text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class ReasoningDelta(_Delta):
    """The next piece of the model's reasoning (``reasoning_content`` / ``reasoning``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class ReasoningSignatureDelta(_Delta):
    """The end of one reasoning block, with the upstream's ``signature`` for it: an
    opaque token the upstream checks, with the block's text unchanged, when the block
    is sent back in a later turn (Anthropic's ``signature_delta``). A block may have no
    text at all (thinking the upstream was asked not to show)."""

    __slots__ = ("signature",)

    def __init__(self, signature: str) -> None:
        self.signature = signature


class RedactedReasoningDelta(_Delta):
    """A whole reasoning block the upstream sent encrypted (Anthropic's
    ``redacted_thinking``): ``data`` goes back to it unchanged in a later turn."""

    __slots__ = ("data",)

    def __init__(self, data: str) -> None:
        self.data = data


class ToolCallDelta(_Delta):
    """A fragment of tool call number ``index``: ``id`` and ``name`` arrive once (usually
    in the first fragment), ``arguments`` is the next piece of the JSON argument string."""

    __slots__ = ("arguments", "id", "index", "name")

    def __init__(
        self, index: int, id: str | None = None, name: str | None = None, arguments: str = ""
    ) -> None:
        self.index = index
        self.id = id
        self.name = name
        self.arguments = arguments


class UsageDelta(_Delta):
    """Token counts the upstream reported for its answer."""

    __slots__ = ("usage",)

    def __init__(self, usage: Usage) -> None:
        self.usage = usage


class FinishDelta(_Delta):
    """The upstream finished its answer, for ``reason`` (``stop``, ``length``,
    ``tool_calls``, ``content_filter``, or an upstream's own word that has no OpenAI
    equivalent, such as Anthropic's ``pause_turn``). ``stop_sequence`` is the stop
    sequence that ended it, when the upstream says which."""

    __slots__ = ("reason", "stop_sequence")

    def __init__(self, reason: str, stop_sequence: str | None = None) -> None:
        self.reason = reason
        self.stop_sequence = stop_sequence


class ExtraDelta(_Delta):
    """Fields of an upstream's delta that polyroute has no type for (``refusal``,
    ``audio``, choice-level ``logprobs``...): kept, never dropped."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields


class RestartDelta(_Delta):
    """The answer starts over (``on_midstream_failure: restart``): forget the
    ``discarded`` characters delivered before; what follows is ``provider``'s answer."""

    __slots__ = ("discarded", "provider")

    def __init__(self, *, discarded: int, provider: str) -> None:
        self.discarded = discarded
        self.provider = provider


class WireDelta(_Delta):
    """Text chunks relayed as the upstream sent them (``Router.stream(...,
    pass_through="openai")`` or ``"anthropic"``): ``data``, the bytes of whole
    Server-Sent Events in the consumer's own format, each one a plain piece of text
    (core/wire.py and core/anthropic_wire.py say which chunks qualify); ``texts``, each
    chunk's text, decoded; ``id`` and ``model``, what the first OpenAI chunk says of
    itself, and ``index``, the content block Anthropic's text deltas name (the consumer
    may show its own instead)."""

    __slots__ = ("data", "id", "index", "model", "texts")

    def __init__(
        self,
        data: bytes,
        texts: list[str],
        id: Any = None,
        model: Any = None,
        index: int | None = None,
    ) -> None:
        self.data = data
        self.texts = texts
        self.id = id
        self.model = model
        self.index = index


Delta: TypeAlias = (
    TextDelta
    | ReasoningDelta
    | ReasoningSignatureDelta
    | RedactedReasoningDelta
    | ToolCallDelta
    | UsageDelta
    | FinishDelta
    | ExtraDelta
    | RestartDelta
    | WireDelta
)
"""Everything a stream can carry."""

CONTENT_DELTAS = (
    TextDelta,
    WireDelta,
    ReasoningDelta,
    ToolCallDelta,
    ReasoningSignatureDelta,
    RedactedReasoningDelta,
)
"""The deltas that count as a first chunk: part of the answer itself."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts. ``details`` keeps what upstreams report beyond the three totals
    (``prompt_tokens_details``, ``completion_tokens_details``...), summed where numeric."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_openai(cls, usage: dict[str, Any]) -> Usage:
        """From an OpenAI-style ``usage`` object; a missing total is the sum of the two."""
        prompt = token_count(usage.get("prompt_tokens"))
        completion = token_count(usage.get("completion_tokens"))
        total = token_count(usage.get("total_tokens")) or prompt + completion
        details = {
            key: value
            for key, value in usage.items()
            if key not in ("prompt_tokens", "completion_tokens", "total_tokens")
            and value is not None
        }
        return cls(prompt, completion, total, details)

    @property
    def cache_read_tokens(self) -> int:
        """Input tokens read from the upstream's prompt cache (counted in
        ``prompt_tokens``): OpenAI's ``prompt_tokens_details.cached_tokens``,
        Anthropic's ``cache_read_input_tokens``, Gemini's ``cachedContentTokenCount``."""
        details = self.details
        return (
            token_count(_nested(details, "prompt_tokens_details", "cached_tokens"))
            or token_count(details.get("cache_read_input_tokens"))
            or token_count(details.get("cachedContentTokenCount"))
        )

    @property
    def cache_write_tokens(self) -> int:
        """Input tokens written to the prompt cache (counted in ``prompt_tokens``):
        Anthropic's ``cache_creation_input_tokens``."""
        return token_count(self.details.get("cache_creation_input_tokens"))

    @property
    def reasoning_tokens(self) -> int:
        """Output tokens spent reasoning (counted in ``completion_tokens``)."""
        details = self.details
        return token_count(
            _nested(details, "completion_tokens_details", "reasoning_tokens")
        ) or token_count(details.get("thoughtsTokenCount"))

    def __add__(self, other: Usage) -> Usage:
        details = dict(self.details)
        _merge(details, other.details, add_numbers=True)
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
            details,
        )

    def as_dict(self) -> dict[str, Any]:
        """The OpenAI ``usage`` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            **self.details,
        }


def _nested(details: dict[str, Any], outer: str, inner: str) -> Any:
    found = details.get(outer)
    return found.get(inner) if isinstance(found, dict) else None


def token_count(value: Any) -> int:
    """``value`` as a token count: an int (not a bool) as it is, anything else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _merge(into: dict[str, Any], new: dict[str, Any], *, add_numbers: bool = False) -> None:
    """Merge ``new`` into ``into``: strings concatenate and lists extend (streamed
    fragments), dicts merge, numbers add when ``add_numbers``, anything else replaces."""
    for key, value in new.items():
        old = into.get(key)
        if isinstance(old, str | list) and type(value) is type(old):
            into[key] = old + value  # type: ignore[operator]
        elif isinstance(old, dict) and isinstance(value, dict):
            merged = dict(old)
            _merge(merged, value, add_numbers=add_numbers)
            into[key] = merged
        elif (
            add_numbers
            and isinstance(old, int | float)
            and isinstance(value, int | float)
            and not isinstance(old, bool)
        ):
            into[key] = old + value
        else:
            into[key] = value


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One complete tool call: ``arguments`` is the whole JSON argument string."""

    id: str
    name: str
    arguments: str

    def as_dict(self) -> dict[str, Any]:
        """The OpenAI shape: ``{id, type: "function", function: {name, arguments}}``."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    def parsed_arguments(self) -> Any:
        """``arguments`` decoded from JSON; raises ``ValueError`` if they are not JSON."""
        return loads(self.arguments)


@dataclass(frozen=True, slots=True)
class AssistantMessage:
    """The assembled answer: what ``stream.message`` and ``router.complete`` give.

    ``content`` is ``None`` when the model only called tools; ``tool_calls`` is empty
    when it called none; ``reasoning`` is ``None`` when the upstream sent none;
    ``extra`` holds delta fields polyroute has no type for, merged.
    """

    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def role(self) -> str:
        return "assistant"

    def as_dict(self) -> dict[str, Any]:
        """The OpenAI chat message, ready to append to the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [call.as_dict() for call in self.tool_calls]
        return message


class MessageBuilder:
    """Adds deltas up into an :class:`AssistantMessage`.

    Text and tool-call fragments are kept as lists (joined and assembled only when
    asked), so adding a delta never copies what came before, and the router can add
    the common ones with one ``list.append``.

    Usage is not kept here: it belongs to the attempt that reported it (see
    ``RouterStream.usage``), and a restart does not unspend tokens.
    """

    __slots__ = ("_extra", "_reasoning", "finish_reason", "text_parts", "tool_fragments")

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.text_parts: list[str] = []
        self.tool_fragments: list[ToolCallDelta] = []
        self._reasoning: list[str] = []
        self._extra: dict[str, Any] = {}
        self.finish_reason: str | None = None

    def add(self, delta: Delta) -> None:
        """Take one delta into account (a restart forgets everything before it)."""
        if isinstance(delta, TextDelta):
            self.text_parts.append(delta.text)
        elif isinstance(delta, WireDelta):
            self.text_parts += delta.texts
        elif isinstance(delta, ReasoningDelta):
            self._reasoning.append(delta.text)
        elif isinstance(delta, ToolCallDelta):
            self.tool_fragments.append(delta)
        elif isinstance(delta, FinishDelta):
            self.finish_reason = delta.reason
        elif isinstance(delta, ExtraDelta):
            _merge(self._extra, delta.fields)
        elif isinstance(delta, RestartDelta):
            self._reset()

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.tool_fragments)

    def tool_calls(self) -> list[ToolCall]:
        """The calls so far, by index; a call without an id gets ``call_<index>``."""
        ids: dict[int, str] = {}
        names: dict[int, str] = {}
        arguments: dict[int, list[str]] = {}
        for fragment in self.tool_fragments:
            index = fragment.index
            pieces = arguments.setdefault(index, [])
            if fragment.id:
                ids[index] = fragment.id
            if fragment.name:
                names[index] = fragment.name
            if fragment.arguments:
                pieces.append(fragment.arguments)
        return [
            ToolCall(ids.get(index) or f"call_{index}", names.get(index, ""), "".join(pieces))
            for index, pieces in sorted(arguments.items())
        ]

    def message(self) -> AssistantMessage:
        text = self.text
        calls = self.tool_calls()
        return AssistantMessage(
            content=text if text or not calls else None,
            tool_calls=calls,
            reasoning="".join(self._reasoning) if self._reasoning else None,
            extra=dict(self._extra),
        )
