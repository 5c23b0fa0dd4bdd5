"""The g4f-style call, as an adapter over :class:`Provider`.

g4f users call ``DarkAI.create_async_generator(model=..., messages=...)`` on the
class and iterate text. Here that call works on the class (a session is opened for
that one call) and on a configured instance (its connection pool is reused), and
yields the answer's text only; :meth:`Provider.stream` gives every delta.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from polyroute.core.deltas import TextDelta
from polyroute.core.messages import Messages
from polyroute.providers.base import Provider, hybridmethod


class AsyncGeneratorProvider(Provider):
    """A provider with g4f's ``create_async_generator``; every built-in one is."""

    @hybridmethod
    def create_async_generator(
        self_or_cls: Any,  # noqa: N805
        model: str | None,
        messages: Messages,
        proxy: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[str, None]:
        """Stream the answer's text to ``messages`` from ``model``, as it arrives.

        Keywords as for :meth:`Provider.stream` (``timeout=``, ``api_endpoint=``,
        ``continue_from=`` and request options). Raises the typed
        :class:`UpstreamError` subclasses; text already yielded stays delivered.
        Closing the generator closes the upstream response at once.
        """
        if isinstance(self_or_cls, type):
            return _one_call(self_or_cls, model, messages, proxy, kwargs)
        return _texts(self_or_cls, model, messages, proxy, kwargs)


async def _one_call(
    cls: type[Provider], model: str | None, messages: Messages, proxy: str | None, kwargs: Any
) -> AsyncGenerator[str, None]:
    async with cls() as provider:
        async for text in _texts(provider, model, messages, proxy, kwargs):
            yield text


async def _texts(
    provider: Provider, model: str | None, messages: Messages, proxy: str | None, kwargs: Any
) -> AsyncGenerator[str, None]:
    deltas = provider.stream(model, messages, proxy=proxy, **kwargs)
    try:
        async for delta in deltas:
            if type(delta) is TextDelta:
                yield delta.text
    finally:
        await deltas.aclose()
