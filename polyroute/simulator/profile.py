"""What a simulated upstream does: wire format, latency, failures, seed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from polyroute.core.schema import StrictModel as _Strict


class Latency(_Strict):
    """Delays in milliseconds; ``jitter_ms`` adds up to that much at random to each."""

    first_chunk_ms: float = Field(150.0, ge=0)
    chunk_gap_ms: float = Field(20.0, ge=0)
    jitter_ms: float = Field(0.0, ge=0)


class DropAfter(_Strict):
    """Cut the connection after ``chunks`` chunks in a ``rate`` share of answers."""

    rate: float = Field(ge=0, le=1)
    chunks: int = Field(ge=0)


class Failures(_Strict):
    """Shares of requests (0..1) that fail, and how. Checked in this order: ``status``
    (answer with that HTTP status), ``reset`` (drop the connection before headers),
    ``stall`` (send nothing until the client gives up), ``drop_after``."""

    status: dict[int, float] = Field(default_factory=dict)
    reset: float = Field(0.0, ge=0, le=1)
    stall: float = Field(0.0, ge=0, le=1)
    drop_after: DropAfter | None = None

    @field_validator("status")
    @classmethod
    def _shares(cls, status: dict[int, float]) -> dict[int, float]:
        for code, share in status.items():
            if not 400 <= code <= 599:
                raise ValueError(f"status {code} is not an HTTP error status")
            if not 0 <= share <= 1:
                raise ValueError(f"share {share} for status {code} is not between 0 and 1")
        return status

    @model_validator(mode="after")
    def _total(self) -> Failures:
        drop = self.drop_after.rate if self.drop_after else 0.0
        if sum(self.status.values()) + self.reset + self.stall + drop > 1:
            raise ValueError("failure shares add up to more than 1")
        return self


class PromptCache(_Strict):
    """A prefix cache, as OpenAI's and Anthropic's APIs keep one: a prompt of at least
    ``min_tokens`` is cached, and a later prompt that starts with it reads the longest
    cached prefix (in steps of ``step_tokens``) from the cache. Tokens are counted at 4
    characters each over the tools, then every message (docs/simulator.md)."""

    min_tokens: int = Field(1024, ge=1, description="shorter prompts are never cached")
    step_tokens: int = Field(128, ge=1, description="cached prefixes grow in these steps")
    ttl_s: float = Field(300.0, gt=0, description="a prefix not read for this long is gone")
    ms_per_1k_uncached: float = Field(
        50.0, ge=0, description="added to the first chunk per 1000 prompt tokens not cached"
    )
    max_prefixes: int = Field(
        100_000, ge=1, description="prefixes kept at most; the least recently used go"
    )


class SimulatedUpstream(_Strict):
    """One simulated upstream server."""

    name: str = Field(min_length=1)
    format: Literal["darkai", "openai", "anthropic"] = "openai"
    port: int = Field(0, ge=0, le=65535, description="0: any free port")
    seed: int = 0
    words: int = Field(24, ge=1, le=10_000, description="length of each answer in words")
    models: list[str] = Field(
        default_factory=lambda: ["sim-large", "sim-small"],
        description="what GET /v1/models lists; a request for any other name is answered too",
    )
    continuation_overlap: int = Field(
        0, ge=0, description="when asked to continue, repeat this many words already given"
    )
    latency: Latency = Latency()
    failures: Failures = Failures()
    prompt_cache: PromptCache | None = Field(
        None, description="off unless set: a prefix cache, reported in usage"
    )


class SimulatorConfig(_Strict):
    upstreams: list[SimulatedUpstream] = Field(min_length=1)
