"""The base of every configuration model (unknown keys are errors, values are frozen),
and the "did you mean" for an unknown key."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A typo like ``priorty`` must fail loudly, not be ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def known_keys(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """The keys the mapping at ``path`` inside ``model`` accepts (by name and alias);
    empty when the path leads to no model."""
    current: Any = model
    for part in path:
        current = _step(current, part)
        if current is None:
            return []
    current = _model_in(current)
    if current is None:
        return []
    names = []
    for name, field in current.model_fields.items():
        names.append(name)
        if isinstance(field.alias, str) and field.alias != name:
            names.append(field.alias)
    return names


def did_you_mean(model: type[BaseModel], path: Sequence[str | int]) -> str:
    """`` (did you mean `models`?)`` for an unknown key at ``path``, or ``""``."""
    if not path or not isinstance(path[-1], str):
        return ""
    close = difflib.get_close_matches(path[-1], known_keys(model, path[:-1]), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _step(annotation: Any, part: str | int) -> Any:
    """The annotation one step down: a model's field, a list's item, a dict's value."""
    for option in _options(annotation):
        origin = typing.get_origin(option)
        if isinstance(option, type) and issubclass(option, BaseModel) and isinstance(part, str):
            field = option.model_fields.get(part) or next(
                (f for f in option.model_fields.values() if f.alias == part), None
            )
            if field is not None:
                return field.annotation
        elif origin in (list, tuple, set, frozenset) and isinstance(part, int):
            return typing.get_args(option)[0]
        elif origin is dict:
            return typing.get_args(option)[1]
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for option in _options(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None


def _options(annotation: Any) -> list[Any]:
    """``X | Y | None`` as ``[X, Y]``; anything else as itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]
