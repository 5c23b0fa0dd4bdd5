"""A synchronous facade for scripts and notebooks: the same router, its event loop
on a background thread.

``SyncRouter`` runs one asyncio loop in a daemon thread for its whole life; every
call hands a coroutine to that loop and waits for its result. Routing, retries,
relays, cancellation and closing behave exactly as in :class:`Router`, because it is
a :class:`Router` underneath.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from polyroute.core.deltas import AssistantMessage, Delta
from polyroute.core.messages import Messages
from polyroute.router.config import RouterConfig
from polyroute.router.router import Router
from polyroute.router.stream import RouterStream

_T = TypeVar("_T")


class _Loop:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the loop and wait; an interrupt (Ctrl-C) of the waiting
        thread cancels it there too."""
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncRouter:
    """:class:`Router` for code without an event loop.

    ``with SyncRouter.from_config("routes.yaml") as router:`` then
    ``for text in router.stream(model, messages): ...``. Takes what :class:`Router`
    takes; ``close()`` (or leaving ``with``) closes the connection pools and stops the
    background loop.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = _Loop()
        try:
            self.router: Router = self._loop.run(_build(Router, *args, **kwargs))
        except BaseException:
            self._loop.stop()
            raise

    @classmethod
    def from_config(
        cls, source: RouterConfig | dict[str, Any] | str | Path, **kwargs: Any
    ) -> SyncRouter:
        """A synchronous router from a file, a dict or a :class:`RouterConfig`."""
        router = cls.__new__(cls)
        router._loop = _Loop()
        try:
            router.router = router._loop.run(_build(Router.from_config, source, **kwargs))
        except BaseException:
            router._loop.stop()
            raise
        return router

    def stream(self, model: str | None, messages: Messages, **options: Any) -> SyncRouterStream:
        """As :meth:`Router.stream`; iterate the result for text (a plain ``for``)."""
        return SyncRouterStream(self.router.stream(model, messages, **options), self._loop)

    def complete(self, model: str | None, messages: Messages, **options: Any) -> AssistantMessage:
        """As :meth:`Router.complete`: the whole answer, assembled."""
        return self._loop.run(self.router.complete(model, messages, **options))

    def complete_text(self, model: str | None, messages: Messages, **options: Any) -> str:
        """As :meth:`Router.complete_text`: just the answer's text."""
        return self._loop.run(self.router.complete_text(model, messages, **options))

    def close(self) -> None:
        """Close every connection pool and stop the background loop. Safe to call twice."""
        if self._loop.loop.is_closed():
            return
        try:
            self._loop.run(self.router.aclose())
        finally:
            self._loop.stop()

    def __enter__(self) -> SyncRouter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SyncRouterStream:
    """One routed answer, iterated with a plain ``for``: text by default,
    :meth:`deltas` for every delta. Its facts (``provider``, ``model``, ``status``,
    ``text``, ``message``, ``usage``, ``attempts``...) are the async stream's.
    ``with`` closes it (and the upstream response) on exit, as ``close()`` does."""

    def __init__(self, stream: RouterStream, loop: _Loop) -> None:
        self.stream = stream
        self._loop = loop

    def __iter__(self) -> Iterator[str]:
        return self._drive(self.stream.__aiter__())

    def deltas(self) -> Iterator[Delta]:
        return self._drive(self.stream.deltas())

    def _drive(self, generator: Any) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._loop.run(_next(generator))
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(generator.aclose())

    def close(self) -> None:
        """Stop the stream and close the upstream response. Safe to call twice."""
        self._loop.run(self.stream.aclose())

    def __enter__(self) -> SyncRouterStream:
        self._loop.run(self.stream.__aenter__())  # so that leaving `with` closes it at once
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


async def _build(factory: Any, *args: Any, **kwargs: Any) -> Router:
    router: Router = factory(*args, **kwargs)
    await router.__aenter__()  # model discovery, as `async with router` does
    return router


async def _next(generator: Any) -> Any:
    return await anext(generator)
