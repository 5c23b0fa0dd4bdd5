"""The base of every configuration model: unknown keys are errors, values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A typo like ``priorty`` must fail loudly, not be ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
