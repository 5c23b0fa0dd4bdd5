"""A simulated upstream (``type: simulated``): starts its own server on 127.0.0.1 on
first use and talks to it through the real DarkAI, OpenAI or Anthropic provider, so
routing, retries and failures are exercised end to end with no network and no keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import ValidationError

from polyroute.core.deltas import Delta
from polyroute.core.errors import ConfigError, describe_validation_error
from polyroute.core.request import ChatRequest
from polyroute.providers.anthropic import Anthropic
from polyroute.providers.base import Provider
from polyroute.providers.compat import AsyncGeneratorProvider
from polyroute.providers.darkai import DarkAI
from polyroute.providers.openai import OpenAI
from polyroute.simulator.profile import SimulatedUpstream
from polyroute.simulator.server import SimulatorServer

_PROFILE_KEYS = (
    *("format", "seed", "words", "latency", "failures", "continuation_overlap"),
    "prompt_cache",
)
_INNER: dict[str, type[Provider]] = {"openai": OpenAI, "darkai": DarkAI, "anthropic": Anthropic}


class Simulated(AsyncGeneratorProvider):
    """Options (``options:`` in a router config): ``format`` (``darkai``, ``openai`` or
    ``anthropic``), ``seed``, ``words``, ``latency``, ``failures`` and ``prompt_cache``,
    as in docs/simulator.md."""

    type_name = "simulated"
    url = "http://127.0.0.1"
    working = True
    default_model = "sim-large"

    def __init__(self, *, timeout: Any = None, **kwargs: Any) -> None:
        options = {key: kwargs.pop(key) for key in _PROFILE_KEYS if key in kwargs}
        tools = kwargs.pop("supports_tools", None)
        prefill = kwargs.get("supports_prefill")
        super().__init__(timeout=timeout, **kwargs)
        try:
            self.profile = SimulatedUpstream(name=self.entry_name, **options)
        except ValidationError as error:
            problems = describe_validation_error(error, prefix="options.")
            raise ConfigError(f"simulated provider {self.entry_name!r}: {problems}") from None
        wire = self.profile.format
        openai_format = wire == "openai"
        self.supports_system_message = self.supports_message_history = wire != "darkai"
        # An openai-format simulator answers a request that offers tools with a call.
        self.supports_tools = openai_format if tools is None else tools
        self.server = SimulatorServer(self.profile)
        self.supports_continuation = True
        self.prompt_format = wire == "darkai"
        if prefill is None and wire == "anthropic":
            self.supports_prefill = True  # as the real type: auto, unless configured
        # The inner provider accepts any model name: this entry's own list decides.
        self._inner = _INNER[wire](
            name=self.entry_name, timeout=self.timeouts, models=[], working=True
        )
        self._inner.supports_prefill = self.supports_prefill
        self._starting = asyncio.Lock()

    def dropped(self, request: ChatRequest) -> list[str]:
        # The inner provider sends the request: what it drops (nothing for the openai
        # format, every option for darkai's) is what this entry drops.
        return self._inner.dropped(request)

    async def start(self) -> None:
        """Start the simulated server (the first request does it anyway). Idempotent."""
        async with self._starting:
            if self.api_endpoint is None:
                await self.server.start()
                self._inner.api_endpoint = self.api_endpoint = self.server.url
                self._inner.base_url = self.server.base_url

    async def aclose(self) -> None:
        await self._inner.aclose()
        await self.server.stop()
        await super().aclose()

    async def stream_batches(
        self, model: str, request: ChatRequest, **kwargs: Any
    ) -> AsyncGenerator[list[Delta], None]:
        if self.api_endpoint is None:
            await self.start()
        self._check(request, kwargs.get("continue_from"))
        batches = self._inner.stream_batches(model, request, **kwargs)
        try:
            async for batch in batches:
                yield batch
        finally:
            await batches.aclose()
