"""What an embeddings request gives back: one vector per input, and the tokens spent.

Embeddings are an operation of their own beside the chat stream (simonw/llm keeps
them a model kind of their own): a provider's ``embed`` answers with one
:class:`Embedded`, whole, rather than a stream of deltas.

A vector travels in one of two forms, as OpenAI's API does: a list of floats, or
``base64``, the little-endian float32 bytes encoded (what OpenAI's SDKs ask for by
default: four times fewer bytes than decimal text and nothing to parse). Each form is
kept as the upstream sent it and converted only when the other one is asked for, so
a gateway relays base64 as base64 without touching a number.
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from dataclasses import dataclass
from typing import Any, Literal

from polyroute.core.attempts import Attempt
from polyroute.core.deltas import Usage
from polyroute.core.errors import UpstreamProtocolError
from polyroute.core.pricing import FREE, Cost, CostStatus

EncodingFormat = Literal["float", "base64"]


class Embedded:
    """The vectors for a list of inputs, ``vectors[i]`` for input ``i`` (the upstream's
    order already undone where it differs), and the tokens counted, when the upstream
    says (``prompt_tokens`` and ``total_tokens``; ``None`` when it does not).

    Give the vectors as floats or as ``base64`` strings (see the module); ``vectors``
    and ``base64`` each read them in their form, converting once on the first ask
    (``vectors`` raises :class:`UpstreamProtocolError` for base64 that does not decode).
    ``body`` is the upstream's answer as it came when a client of OpenAI's embeddings
    API may be sent it unchanged (OpenAI's ``list``, in the inputs' order, in the form
    asked, naming the model asked); ``None`` otherwise.
    """

    __slots__ = ("_base64", "_floats", "body", "usage")

    def __init__(
        self,
        vectors: list[list[float]] | None = None,
        usage: Usage | None = None,
        *,
        base64: list[str] | None = None,
        body: bytes | None = None,
    ) -> None:
        if (vectors is None) == (base64 is None):
            raise TypeError("Embedded takes the vectors either as floats or as base64")
        self._floats = vectors
        self._base64 = base64
        self.usage = usage
        self.body = body

    @property
    def vectors(self) -> list[list[float]]:
        if self._floats is None:
            self._floats = [_floats_of(text) for text in self._base64 or ()]
        return self._floats

    @property
    def base64(self) -> list[str]:
        if self._base64 is None:
            self._base64 = [_base64_of(vector) for vector in self._floats or ()]
        return self._base64

    def __len__(self) -> int:
        return len(self._floats if self._floats is not None else self._base64 or ())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Embedded):
            return NotImplemented
        return self.vectors == other.vectors and self.usage == other.usage

    __hash__ = None  # type: ignore[assignment]  # mutable caches: compared, not hashed

    def __repr__(self) -> str:
        dimensions = len(self.vectors[0]) if len(self) else 0
        return f"Embedded({len(self)} vectors of {dimensions}, usage={self.usage!r})"


@dataclass(frozen=True, slots=True)
class Embeddings:
    """What ``Router.embed`` gives: ``vectors[i]`` for input ``i`` (or ``base64[i]``,
    the same vector in OpenAI's base64 form), from ``model`` (the upstream's name) on
    the entry ``provider``; ``usage`` as the upstream counted it (``None`` when it did
    not say); ``attempts``, every try in order; ``embedded``, the provider's answer;
    ``cost``, what the attempts cost (``cost_usd`` and ``cost_status`` as a stream's)."""

    model: str
    provider: str
    usage: Usage | None
    attempts: list[Attempt]
    embedded: Embedded
    cost: Cost = FREE
    budget_remaining_usd: float | None = None
    """With ``budget=``: what is left on the tightest budget, this request's reservation
    counted."""

    @property
    def cost_usd(self) -> float | None:
        return self.cost.usd

    @property
    def cost_status(self) -> CostStatus:
        return self.cost.status

    @property
    def vectors(self) -> list[list[float]]:
        return self.embedded.vectors

    @property
    def base64(self) -> list[str]:
        return self.embedded.base64


def read_vector(values: Any, where: str) -> list[float]:
    """``values`` as a vector of numbers; raises ``TypeError`` naming ``where`` (such as
    ``data[2].embedding``) when it is not a non-empty list of numbers."""
    if not isinstance(values, list) or not values:
        raise TypeError(f"{where} is not a non-empty list of numbers")
    try:
        # One pass in C that fails on anything but a number (a string, null, a list):
        # a check per value in Python costs more than parsing the JSON did (measured:
        # 160 us against 19 for 16 vectors of 256). sum takes true and false for 1
        # and 0; JSON booleans in a vector pass as those numbers.
        sum(values)
    except TypeError:
        bad = next(v for v in values if not isinstance(v, float | int))
        raise TypeError(f"{where} holds {type(bad).__name__} {bad!r}, not a number") from None
    return values


def read_base64_vector(text: Any, where: str) -> str:
    """``text`` when it has the shape of a base64 vector: ASCII, in whole groups of
    four, padding only at the end, a whole number of float32s (at least one); raises
    ``TypeError`` naming ``where`` otherwise. Its letters are checked when it is
    decoded (:attr:`Embedded.vectors`), not here: a check costs as much as decoding
    (3 us a vector of 256), and a relayed vector is never decoded."""
    length = len(text) if isinstance(text, str) else 0
    if not length or length % 4 or not text.isascii() or text.find("=", 0, length - 2) >= 0:
        raise TypeError(f"{where} is not base64")
    size = length // 4 * 3 - (2 if text.endswith("==") else text.endswith("="))
    if not size or size % 4:
        raise TypeError(f"{where} holds {size} bytes, not a whole number of float32s")
    return str(text)


def read_vectors(values: list[Any], where: str) -> list[Any]:
    """``values`` read as vectors, all floats or all base64 strings as the first is;
    ``where`` names one with ``{}`` for its position (``data[{}].embedding``). Raises as
    :func:`read_vector` and :func:`read_base64_vector` do; the text naming a vector is
    made only for one that fails (made for each, it cost as much as the checks)."""
    if isinstance(values[0], str):
        for position, text in enumerate(values):
            # read_base64_vector's checks, inline: a call a vector costs more than they do
            length = len(text) if type(text) is str else 0
            if (
                not length
                or length % 4
                or not text.isascii()
                or text.find("=", 0, length - 2) >= 0
                or (length // 4 * 3 - (2 if text[-2:] == "==" else text[-1] == "=")) % 4
            ):
                read_base64_vector(text, where.format(position))  # raises, saying why
        return values
    for position, vector in enumerate(values):
        try:
            if type(vector) is list and vector:
                sum(vector)  # as read_vector: one pass in C that fails on a non-number
                continue
        except TypeError:
            pass
        read_vector(vector, where.format(position))  # raises, saying why
    return values


def _floats_of(text: str) -> list[float]:
    try:
        values = array("f", binascii.a2b_base64(text, strict_mode=True))
    except binascii.Error as error:
        raise UpstreamProtocolError(f"a base64 vector does not decode ({error})") from None
    if sys.byteorder == "big":
        values.byteswap()  # OpenAI's base64 is little-endian
    return values.tolist()


def _base64_of(vector: list[float]) -> str:
    values = array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode()
