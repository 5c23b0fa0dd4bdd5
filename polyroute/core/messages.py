"""Chat messages in OpenAI's full shape: validation of what callers pass, the text
view of a message, and g4f's prompt format for upstreams that take one prompt."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from polyroute.core.errors import InvalidMessagesError, describe_validation_error

Role: TypeAlias = Literal["system", "user", "assistant", "tool", "developer"]


class _Part(BaseModel):
    # Parts keep keys polyroute does not know (``cache_control``...): upstreams may.
    model_config = ConfigDict(extra="allow", frozen=True)


class TextPart(_Part):
    type: Literal["text"]
    text: str


class ImageURL(_Part):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Part):
    data: str
    format: str


class AudioPart(_Part):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileData(_Part):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Part):
    type: Literal["file"]
    file: FileData


ContentPart: TypeAlias = Annotated[
    TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")
]


class FunctionCall(_Part):
    name: str
    arguments: str


class MessageToolCall(_Part):
    """A tool call recorded in an assistant message of the conversation."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One chat message, as OpenAI's chat API takes it.

    ``content`` is a string or a list of parts (``text``, ``image_url``,
    ``input_audio``, ``file``); an assistant message may carry ``tool_calls`` and
    ``content: None``; a ``tool`` message answers the call ``tool_call_id``.
    Unknown keys are kept and passed on.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _shape_fits_role(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id (the call it answers)")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("only tool messages carry tool_call_id")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (it may be null only beside tool_calls)")
        return self

    def text(self) -> str:
        """The text of ``content``: the string, or the text parts joined by newlines."""
        content = self.content
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "\n".join(part.text for part in content if isinstance(part, TextPart))

    @property
    def has_media(self) -> bool:
        """Whether ``content`` holds parts other than text (images, audio, files)."""
        content = self.content
        return isinstance(content, list) and any(not isinstance(part, TextPart) for part in content)

    @property
    def uses_tools(self) -> bool:
        return bool(self.tool_calls) or self.role == "tool"

    def as_openai(self) -> dict[str, Any]:
        """The message as OpenAI's JSON takes it: unset optional keys left out, but
        ``content`` always there (``null`` beside tool calls, which every server takes)."""
        message = self.model_dump(exclude_none=True)
        message.setdefault("content", None)
        return message


Messages: TypeAlias = Sequence[Message | Mapping[str, Any] | BaseModel]
"""What providers and the router accept: dicts like ``{"role": "user", "content": "Hi"}``,
:class:`Message` objects, or any pydantic model with ``role`` and ``content``."""

_MESSAGE_LIST = TypeAdapter(list[Message])


def normalize_messages(messages: Messages) -> list[Message]:
    """Validate ``messages`` once and return them as :class:`Message` objects.

    Raises :class:`InvalidMessagesError` (a ``ValueError``) naming the bad message's
    index and field, or when the list is empty.
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidMessagesError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise InvalidMessagesError("messages must not be empty")
    if all(type(message) is Message for message in messages):
        checked: list[Message] = list(messages)  # type: ignore[arg-type]
    else:
        raw = [
            message.model_dump()
            if isinstance(message, BaseModel) and not isinstance(message, Message)
            else message
            for message in messages
        ]
        try:
            checked = _MESSAGE_LIST.validate_python(raw)
        except ValidationError as error:
            problems = describe_validation_error(error, prefix="message ")
            raise InvalidMessagesError(f"invalid messages: {problems}") from None
    for index, message in enumerate(checked):
        if (where := lone_surrogate_in(message)) is not None:
            raise InvalidMessagesError(f"invalid messages: message {index}.{where}")
    return checked


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_in(value: Any) -> str | None:
    """Where ``value`` (a string, a model, or dicts and lists of them) holds a lone
    surrogate, and what to do about it (``content.0.text: '\\udc00' at character 1 is
    ...``); ``None`` when it holds none.

    Such a character (half of a UTF-16 pair, or an undecodable byte as Python's
    ``surrogateescape`` keeps it) has no UTF-8 form, so no upstream could be sent it.
    """
    found = _surrogate_at(value)
    if found is None:
        return None
    path, character, index = found
    # A key holding the surrogate is shown escaped: the message must be printable.
    shown = [repr(p) if isinstance(p, str) and _SURROGATE.search(p) else str(p) for p in path]
    where = ".".join(shown)
    return (
        f"{where + ': ' if where else ''}{character!r} at character {index} is a lone "
        "surrogate, which UTF-8 cannot encode; remove it, or decode the text's source "
        "with errors='replace'"
    )


def _surrogate_at(value: Any) -> tuple[list[str | int], str, int] | None:
    """The key path, the character and its index of the first lone surrogate."""
    if value is None or type(value) in _SCALARS:
        return None
    if isinstance(value, str):
        if value.isascii():  # a flag lookup: the usual text costs no scan
            return None
        try:
            value.encode("utf-8")  # five times as fast as a regex search
        except UnicodeEncodeError as error:
            return [], value[error.start], error.start
        return None
    if isinstance(value, BaseModel):
        # A model's own keys are identifiers; only the keys it keeps (extra) are free.
        for name, field in value.__dict__.items():
            if (found := _surrogate_at(field)) is not None:
                return [name, *found[0]], found[1], found[2]
        value = value.__pydantic_extra__
        if not value:
            return None
    if isinstance(value, dict | Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if (found := _surrogate_at(key)) is not None:
            return [key], found[1], found[2]
        if (found := _surrogate_at(item)) is not None:
            return [key, *found[0]], found[1], found[2]
    return None


_SCALARS = frozenset({bool, int, float})


def _role_lines(messages: list[Message]) -> str:
    return "\n".join(f"{message.role.capitalize()}: {message.text()}" for message in messages)


def format_prompt(messages: Messages) -> str:
    """Flatten a conversation into one prompt, as g4f (and DarkAI's upstream) expect.

    One message gives its text unchanged; several give one ``"Role: text"`` line each,
    joined by newlines, followed by ``"\\nAssistant:"``. Text parts are joined by
    newlines; other parts cannot be put in a prompt (see ``supports_vision``).
    Raises :class:`InvalidMessagesError` (a ``ValueError``) on an empty list.
    """
    checked = normalize_messages(messages)
    if len(checked) == 1:
        return checked[0].text()
    return f"{_role_lines(checked)}\nAssistant:"


CONTINUE_INSTRUCTION = (
    "Continue your previous answer exactly where it stopped, mid-word if need be. "
    "Do not repeat anything you already wrote and do not comment on the interruption."
)
"""What chat-format providers are told when they take over an answer another one began."""


def continuation_messages(messages: list[Message], partial: str, *, prefill: bool) -> list[Message]:
    """The conversation that asks a chat model to continue ``partial``.

    With ``prefill`` the conversation simply ends with the partial assistant message
    (for upstreams that continue a final assistant message); otherwise an instruction
    to continue follows it.
    """
    tail = [Message(role="assistant", content=partial)]
    if not prefill:
        tail.append(Message(role="user", content=CONTINUE_INSTRUCTION))
    return [*messages, *tail]


def continuation_prompt(messages: Messages, partial: str) -> str:
    """A prompt-format continuation: every message as a ``Role: text`` line, then
    ``Assistant:`` followed by the partial answer, for the model to carry on."""
    return f"{_role_lines(normalize_messages(messages))}\nAssistant: {partial}"
