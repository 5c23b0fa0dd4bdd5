"""How a cut answer is handed to the entry that continues it, and which models refuse
prefill (learned from their upstreams' answers, kept in the routing state).

A prompt-format entry (DarkAI) is always given the prompt with the partial answer after
its ``Assistant:`` cue. A chat-format entry is given the conversation and the partial
answer, then either nothing more (prefill: the upstream continues a final assistant
message) or an instruction to continue (docs/relay.md). Prefill is chosen when the
entry's ``supports_prefill`` (and the model's, under ``per_model``) allows it and no
reasoning is involved (Anthropic's API refuses prefill with extended thinking, and a
reasoning model told to continue reasons on its own); with ``auto``, also only while
the model has not refused it: Claude Sonnet and Opus 4.6 and later answer a final
assistant turn with a 400 (LiteLLM #27967), which the stream retries at once by
instruction and records here, so that every process sharing the state asks that
model by instruction from then on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeAlias

from polyroute.core.logging import EventLogger
from polyroute.core.request import ChatRequest
from polyroute.router.config import PrefillSetting
from polyroute.router.policy import Candidate
from polyroute.router.state import RoutingState

Continuation: TypeAlias = Literal["prefill", "instruction", "prompt"]
"""How a continuation was asked for (the ``continuation`` of a ``route.relay`` event)."""

REFUSAL_TTL_S = 30 * 24 * 3600.0
"""How long a model's refusal of prefill is remembered (a model that starts taking it
again is asked by prefill after that)."""


def entry_setting(candidate: Candidate) -> PrefillSetting:
    """The entry's ``supports_prefill``: as configured, else ``auto`` for a type that
    can prefill (its class flag; Anthropic's) and ``false`` for the others."""
    entry = candidate.entry
    if entry.prefill is not None:
        return entry.prefill
    return "auto" if entry.provider.supports_prefill else False


def refusal_key(candidate: Candidate) -> str:
    """The record that says the candidate's model refuses prefill: per provider type and
    upstream model name (two entries of one API learn it once)."""
    provider = candidate.entry.provider
    kind = provider.type_name or type(provider).__name__
    return f"prefill-refused:{kind}:{candidate.upstream_model}"


async def choose(
    candidate: Candidate,
    route: PrefillSetting | None,
    state: RoutingState,
    *,
    reasoning: bool,
) -> tuple[Continuation, bool | None]:
    """How to ask ``candidate`` to continue, and the ``prefill=`` to pass its provider
    (``None``: its type's own way, for entries that never prefill). ``route`` is the
    model's ``supports_prefill`` (``None``: unset); ``reasoning``: the answer or the
    request involves reasoning."""
    if candidate.entry.provider.prompt_format:
        return "prompt", None
    own = entry_setting(candidate)
    if own is False:
        return "instruction", None
    setting = own if route is None or route == "auto" else route
    if setting is False or reasoning:
        return "instruction", False
    if setting == "auto" and await state.get_record(refusal_key(candidate)) is not None:
        return "instruction", False
    return "prefill", True


async def learn_refusal(candidate: Candidate, state: RoutingState, log: EventLogger) -> None:
    """Remember that ``candidate``'s model refused prefill (``route.prefill_refused``)."""
    log.warning(
        "route.prefill_refused",
        provider=candidate.name,
        model=candidate.upstream_model,
        remembered_s=REFUSAL_TTL_S,
    )
    await state.put_record(refusal_key(candidate), b"1", REFUSAL_TTL_S)


def asks_for_reasoning(request: ChatRequest) -> bool:
    """Whether the request turns reasoning on: OpenAI's ``reasoning_effort`` (other than
    ``none``), a ``thinking`` (Anthropic's) or ``reasoning`` (OpenRouter's) object in
    ``extra_body``, or thinking in a native Anthropic request."""
    effort = request.options.get("reasoning_effort")
    if effort is not None and effort != "none":
        return True
    if _is_on(request.extra_body.get("thinking")) or _is_on(request.extra_body.get("reasoning")):
        return True
    native = request.native
    return native is not None and _is_on(native.body.get("thinking"))


def _is_on(setting: Any) -> bool:
    if not isinstance(setting, Mapping):
        return False
    return setting.get("type") != "disabled" and setting.get("enabled") is not False
