"""Chat messages: validation of what callers pass, and g4f's prompt format."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from polyroute.core.errors import InvalidMessagesError, describe_validation_error

Role: TypeAlias = Literal["system", "user", "assistant", "tool", "developer"]


class Message(BaseModel):
    """One chat message. Extra keys (``name``, ``tool_call_id``...) are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    role: Role
    content: str


Messages: TypeAlias = Sequence[Message | Mapping[str, Any] | BaseModel]
"""What providers and the router accept: dicts like ``{"role": "user", "content": "Hi"}``,
:class:`Message` objects, or any pydantic model with ``role`` and ``content``."""

_MESSAGE_LIST = TypeAdapter(list[Message])


def normalize_messages(messages: Messages) -> list[Message]:
    """Validate ``messages`` once and return them as :class:`Message` objects.

    Raises :class:`InvalidMessagesError` (a ``ValueError``) naming the bad message
    and field, or when the list is empty.
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidMessagesError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise InvalidMessagesError("messages must not be empty")
    if all(type(message) is Message for message in messages):
        return list(messages)  # type: ignore[arg-type]
    raw = [
        message.model_dump()
        if isinstance(message, BaseModel) and not isinstance(message, Message)
        else message
        for message in messages
    ]
    try:
        return _MESSAGE_LIST.validate_python(raw)
    except ValidationError as error:
        problems = describe_validation_error(error, prefix="message ")
        raise InvalidMessagesError(f"invalid messages: {problems}") from None


def format_prompt(messages: Messages) -> str:
    """Flatten a conversation into one prompt, as g4f (and DarkAI's upstream) expect.

    One message gives its content unchanged; several give one ``"Role: content"``
    line each, joined by newlines, followed by ``"\\nAssistant:"``.
    Raises :class:`InvalidMessagesError` (a ``ValueError``) on an empty list.
    """
    checked = normalize_messages(messages)
    if len(checked) == 1:
        return checked[0].content
    lines = "\n".join(f"{message.role.capitalize()}: {message.content}" for message in checked)
    return f"{lines}\nAssistant:"


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
    """A prompt-format continuation: every message as a ``Role: content`` line, then
    ``Assistant:`` followed by the partial answer, for the model to carry on."""
    checked = normalize_messages(messages)
    lines = "\n".join(f"{message.role.capitalize()}: {message.content}" for message in checked)
    return f"{lines}\nAssistant: {partial}"
