"""What an embeddings request gives back: one vector per input, and the tokens spent.

Embeddings are an operation of their own beside the chat stream (simonw/llm keeps
them a model kind of their own): a provider's ``embed`` answers with one
:class:`Embedded`, whole, rather than a stream of deltas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from polyroute.core.attempts import Attempt
from polyroute.core.deltas import Usage


@dataclass(frozen=True, slots=True)
class Embedded:
    """The vectors for a list of inputs, ``vectors[i]`` for input ``i`` (the upstream's
    order already undone where it differs), and the tokens counted, when the upstream
    says (``prompt_tokens`` and ``total_tokens``; ``None`` when it does not)."""

    vectors: list[list[float]]
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    """What ``Router.embed`` gives: ``vectors[i]`` for input ``i``, from ``model`` (the
    upstream's name) on the entry ``provider``; ``usage`` as the upstream counted it
    (``None`` when it did not say); ``attempts``, every try in order."""

    vectors: list[list[float]]
    model: str
    provider: str
    usage: Usage | None
    attempts: list[Attempt]


def read_vector(values: Any, where: str) -> list[float]:
    """``values`` as a vector of floats; raises ``TypeError`` naming ``where`` (such as
    ``data[2].embedding``) when it is not a non-empty list of numbers."""
    if not isinstance(values, list) or not values:
        raise TypeError(f"{where} is not a non-empty list of numbers")
    if all(type(value) is float for value in values):
        return values  # the usual case: checked in one pass, not copied
    for value in values:
        if type(value) is not float and type(value) is not int:
            raise TypeError(f"{where} holds {type(value).__name__} {value!r}, not a number")
    return [float(value) for value in values]
