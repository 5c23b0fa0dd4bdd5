"""Affinity: the requests of one conversation (or user, or key) go to the entry that
served it before, where the upstream's prompt cache holds its prefix.

The key is a hash of what ``affinity.by`` names (docs/router.md#affinity): by default
the conversation (system prompt, tools and first user message, which every later turn
repeats), or the caller's ``user``, its ``prompt_cache_key``, or a request header. The
pin (key -> entry) is kept in the routing state, so every process sharing it routes
the conversation alike, and is forgotten after ``ttl_s`` without a request. Before the
first attempt the pinned entry goes to the front of the candidates; it is tried there
only while it is usable and has headroom (the engine's usual rules), so a failure or a
limit moves the request on, and the entry that serves it is pinned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from polyroute.core.logging import EventLogger
from polyroute.core.request import ChatRequest
from polyroute.router.config import AffinityConfig
from polyroute.router.state import RoutingState

SHORT = 12
"""Hex characters of the key shown in events."""


@dataclass(frozen=True, slots=True)
class AffinityPlan:
    """One request's affinity: its key (a hash) and how long an idle pin lasts."""

    key: str
    ttl_s: float

    @property
    def short(self) -> str:
        """The key as events show it."""
        return self.key[:SHORT]

    @property
    def record(self) -> str:
        """The pin's name in the routing state."""
        return f"affinity:{self.key}"


def affinity_plan(
    config: AffinityConfig | None,
    model: str,
    request: ChatRequest,
    headers: Mapping[str, str] | None = None,
) -> AffinityPlan | None:
    """The affinity of a request for ``model``, or ``None``: affinity is off, or the
    request has no such key (no ``user``, no such header...)."""
    if config is None:
        return None
    found = _identity(config.by, request, headers)
    if found is None:
        return None
    digest = hashlib.sha256(orjson.dumps([model, config.by, found])).hexdigest()
    return AffinityPlan(digest, config.ttl_s)


def _identity(by: str, request: ChatRequest, headers: Mapping[str, str] | None) -> Any:
    """What the key is made of, or ``None`` when the request has none."""
    options = request.options
    if by == "conversation":
        return conversation(request)
    if by == "prompt_cache_key":
        return options.get("prompt_cache_key") or None
    if by == "user":
        return _user(request)
    return _header(headers, by.removeprefix("header:"))


def conversation(request: ChatRequest) -> list[Any]:
    """What a conversation's every turn repeats: its system prompt, its tools and its
    first user message (as sent: text and content parts)."""
    system = [m.text() for m in request.messages if m.role in ("system", "developer")]
    first = next((m.as_openai() for m in request.messages if m.role == "user"), None)
    return [system, request.options.get("tools"), first]


def _user(request: ChatRequest) -> str | None:
    """OpenAI's ``user``, or Anthropic's ``metadata.user_id`` (the gateway's messages
    dialect makes it ``user``; a native request may still carry it)."""
    user = request.options.get("user")
    if isinstance(user, str) and user:
        return user
    metadata = request.options.get("metadata")
    native = request.native
    if not isinstance(metadata, Mapping) and native is not None:
        metadata = native.body.get("metadata")
    found = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    return found if isinstance(found, str) and found else None


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:  # a plain dict: names compared without case
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value or None


async def pinned(state: RoutingState, plan: AffinityPlan) -> str | None:
    """The entry the plan's key is pinned to (its idle TTL renewed), or ``None``."""
    return await state.get_pin(plan.record, plan.ttl_s)


async def repin(
    state: RoutingState, plan: AffinityPlan, before: str | None, serving: str, log: EventLogger
) -> None:
    """The request was served by ``serving``: keep, make or move the pin, and say so
    (``route.affinity``: ``kept``, ``made`` or ``moved``)."""
    if before == serving:
        log.info("route.affinity", action="kept", provider=serving, key=plan.short)
        return  # reading the pin renewed it
    await state.put_pin(plan.record, serving, plan.ttl_s)
    if before is None:
        log.info("route.affinity", action="made", provider=serving, key=plan.short)
    else:
        log.info(
            "route.affinity",
            action="moved",
            provider=serving,
            from_provider=before,
            key=plan.short,
        )
