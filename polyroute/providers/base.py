"""Provider base classes: what every upstream module declares and inherits.

A provider is data plus two small functions. The class attributes say where the
upstream lives and what it serves; :meth:`build_request` turns messages into the
JSON body; :meth:`parse_event` turns one decoded SSE event into text, the end of
the stream, or nothing. HTTP, SSE framing, timeouts and error mapping come from
``polyroute.core``.

Every public method works on the class (as g4f users call it:
``DarkAI.create_async_generator(model=..., messages=...)``, which opens and closes a
session for that one call) and on a configured instance
(``DarkAI(api_endpoint=..., timeout=...)``, which keeps one connection pool across
requests until ``await provider.aclose()`` or the end of ``async with``).
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, ClassVar, Final, Generic, TypeVar

from polyroute.core.attempts import StreamReport
from polyroute.core.errors import (
    ConfigError,
    InvalidRequestError,
    ModelNotSupportedError,
    PolyrouteError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from polyroute.core.http import SessionOwner, Timeouts, stream_event_batches
from polyroute.core.messages import Message, Messages, normalize_messages
from polyroute.core.redaction import redact, register_secret
from polyroute.core.sse import SSEEvent

_R = TypeVar("_R")


class _StreamEnd:
    """Type of :data:`STREAM_END`."""

    def __repr__(self) -> str:
        return "STREAM_END"


STREAM_END: Final = _StreamEnd()
"""Returned by :meth:`AsyncGeneratorProvider.parse_event` when the upstream says it is done."""

ParseResult = str | _StreamEnd | None


class hybridmethod(Generic[_R]):  # noqa: N801 - named like the builtins it stands beside
    """Like ``classmethod``, but bound to the instance when called on one."""

    def __init__(self, func: Callable[..., _R]) -> None:
        self.__func__ = func
        self.__doc__ = func.__doc__

    def __get__(self, instance: object, owner: type | None = None) -> Callable[..., _R]:
        return types.MethodType(self.__func__, owner if instance is None else instance)


class BaseProvider:
    """Flags and model handling shared by every provider.

    Class attributes are the defaults; keyword arguments to the constructor override
    them for that instance only.
    """

    name: ClassVar[str | None] = None
    """Registry type name (``"darkai"``); set by the registry table."""

    url: str | None = None
    api_endpoint: str | None = None
    working: bool = False
    supports_stream: bool = False
    supports_system_message: bool = False
    supports_message_history: bool = False
    needs_auth: bool = False
    supports_continuation: bool = False
    """Can take over an answer another provider began (``continue_from=`` in requests)."""
    default_model: str | None = None
    models: list[str] = []
    model_aliases: dict[str, str] = {}

    @hybridmethod
    def get_model(self_or_cls: Any, model: str | None) -> str:  # noqa: N805
        """The upstream's name for ``model``.

        Empty or ``None`` gives ``default_model``; an alias gives its target; a name
        outside a non-empty ``models`` list raises :class:`ModelNotSupportedError`
        naming the provider and the valid models; anything else is returned unchanged.
        """
        if not model:
            return str(self_or_cls.default_model or "")
        if model in self_or_cls.model_aliases:
            return str(self_or_cls.model_aliases[model])
        if self_or_cls.models and model not in self_or_cls.models:
            raise ModelNotSupportedError(
                model, provider=_label(self_or_cls), supported=self_or_cls.models
            )
        return model

    @hybridmethod
    def serves(self_or_cls: Any, model: str) -> bool:  # noqa: N805
        """Whether :meth:`get_model` accepts ``model``."""
        try:
            self_or_cls.get_model(model)
        except ModelNotSupportedError:
            return False
        return True


class AsyncGeneratorProvider(BaseProvider):
    """A provider whose answer is an async generator of text pieces over SSE."""

    supports_stream = True
    timeouts: Timeouts = Timeouts()
    """Class default: 10 s to connect, 600 s in all."""
    headers: Mapping[str, str] = {}
    """Headers sent with every request, before per-instance ``headers``."""
    end_event_name: ClassVar[str] = "the end-of-stream event"
    """How errors name the event that ends a complete answer."""

    def __init__(
        self,
        *,
        name: str | None = None,
        api_endpoint: str | None = None,
        timeout: Timeouts | float | None = None,
        proxy: str | None = None,
        headers: Mapping[str, str] | None = None,
        working: bool | None = None,
        default_model: str | None = None,
        models: list[str] | None = None,
        model_aliases: dict[str, str] | None = None,
        connection_limit: int = 0,
        api_key: str | None = None,
    ) -> None:
        self.entry_name = name or type(self).name or type(self).__name__
        if api_endpoint is not None:
            self.api_endpoint = api_endpoint
        self.timeouts = type(self).timeouts.merged(timeout)
        self.proxy = proxy
        self.headers = {**type(self).headers, **(headers or {})}
        if api_key:
            register_secret(api_key)
            self.headers.update(self.auth_headers(api_key))
        if working is not None:
            self.working = working
        if models is not None:
            self.models = list(models)
        if default_model is not None:
            self.default_model = default_model
        elif self.models and self.default_model not in self.models:
            # An entry restricted to other models must not default to one it rejects.
            self.default_model = self.models[0]
        if model_aliases is not None:
            self.model_aliases = dict(model_aliases)
        self._sessions = SessionOwner(limit=connection_limit)

    def __repr__(self) -> str:
        # Headers and the proxy may carry credentials: show neither in full.
        proxy = f", proxy={redact(self.proxy)!r}" if self.proxy else ""
        return (
            f"{type(self).__name__}(name={self.entry_name!r}, "
            f"api_endpoint={self.api_endpoint!r}{proxy})"
        )

    async def __aenter__(self) -> AsyncGeneratorProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close this instance's connection pool. Safe to call twice."""
        await self._sessions.aclose()

    # What a provider module fills in -----------------------------------------

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """Headers that carry ``api_key``; bearer authentication unless overridden."""
        return {"Authorization": f"Bearer {api_key}"}

    def build_request(
        self,
        model: str,
        messages: list[Message],
        *,
        continue_from: str | None = None,
        **params: Any,
    ) -> Any:
        """The JSON body for ``model`` and the validated ``messages``.

        ``continue_from`` (only passed when ``supports_continuation``) is a partial
        answer the upstream must carry on from, without repeating it.
        """
        raise NotImplementedError

    def parse_event(self, event: SSEEvent, report: StreamReport) -> ParseResult:
        """Text to yield, :data:`STREAM_END`, or ``None`` to skip the event.

        Record ``finish_reason`` and ``usage`` on ``report`` when the event carries them.
        Raise :class:`UpstreamProtocolError` for data that breaks the wire format, or
        the matching typed error for an error the upstream reports inside the stream.
        """
        raise NotImplementedError

    def classify_status_error(self, error: UpstreamStatusError, model: str) -> PolyrouteError:
        """A more precise error for a non-2xx answer, read from its body (``error.body``).

        The default keeps the status-based error; OpenAI-style upstreams tell a missing
        model or an over-long context apart here.
        """
        return error

    async def discover_models(self) -> list[str]:
        """Ask the upstream which models it serves and use that list as ``models``.

        Raises :class:`ConfigError` for provider types that cannot list their models.
        """
        raise ConfigError(f"provider {self.entry_name!r} cannot discover its models")

    # The streaming machinery ---------------------------------------------------

    @hybridmethod
    def create_async_generator(
        self_or_cls: Any,  # noqa: N805
        model: str | None,
        messages: Messages,
        proxy: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[str, None]:
        """Stream the answer to ``messages`` from ``model`` as text pieces, as they arrive.

        Keyword overrides ``api_endpoint=`` and ``timeout=`` (seconds in all, or a
        :class:`Timeouts`) apply to this call only; pass ``report=StreamReport()`` to
        receive ``finish_reason`` and ``usage``, and ``continue_from=partial`` to have a
        provider that ``supports_continuation`` carry on an unfinished answer. Other
        keywords are request parameters (sampling options) for providers that take them.
        Raises the typed :class:`UpstreamError` subclasses; text already yielded stays
        delivered. Closing the generator closes the upstream response at once.
        """
        if isinstance(self_or_cls, type):
            return self_or_cls._one_call(model, messages, proxy, **kwargs)  # type: ignore[attr-defined, no-any-return]
        # On an instance, the streaming generator itself: no wrapper costs a hop per chunk.
        return self_or_cls._stream(model, messages, proxy, **kwargs)  # type: ignore[no-any-return]

    @classmethod
    async def _one_call(
        cls, model: str | None, messages: Messages, proxy: str | None, **kwargs: Any
    ) -> AsyncGenerator[str, None]:
        # g4f's class-level call: a session for this call only.
        async with cls() as provider:
            async for text in provider._stream(model, messages, proxy, **kwargs):
                yield text

    async def _stream(
        self,
        model: str | None,
        messages: Messages,
        proxy: str | None,
        *,
        api_endpoint: str | None = None,
        timeout: Timeouts | float | None = None,  # noqa: ASYNC109 - the documented override
        report: StreamReport | None = None,
        continue_from: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[str, None]:
        upstream_model = self.get_model(model)
        if continue_from and not self.supports_continuation:
            raise InvalidRequestError(f"provider {self.entry_name!r} cannot continue an answer")
        checked = normalize_messages(messages)
        body = self.build_request(
            upstream_model, checked, continue_from=continue_from or None, **kwargs
        )
        timeouts = self.timeouts.merged(timeout)
        url = api_endpoint or self.api_endpoint
        if not url:
            raise UpstreamProtocolError("no api_endpoint configured", provider=self.entry_name)
        batches = stream_event_batches(
            self._sessions.session,
            url,
            provider=self.entry_name,
            body=body,
            headers=self.headers,
            proxy=proxy or self.proxy,
            timeouts=timeouts,
        )
        report = report or StreamReport()
        texts: list[str] = []
        ended = exhausted = False
        failure: PolyrouteError | None = None
        try:
            try:
                # The first-chunk limit covers only the wait before the first text: a
                # timeout must never fire while the consumer holds the generator suspended.
                async with asyncio.timeout(timeouts.first_chunk):
                    async for batch in batches:
                        texts, ended, failure = self._parse(batch, report)
                        if texts or ended or failure:
                            break
                    else:
                        exhausted = True
            except UpstreamTimeout:
                raise
            except TimeoutError as error:
                raise UpstreamTimeout(
                    f"no text within the first-chunk timeout of {timeouts.first_chunk} s",
                    provider=self.entry_name,
                ) from error
            for text in texts:
                yield text
            if failure:
                raise failure
            if not (ended or exhausted):
                async for batch in batches:
                    texts, ended, failure = self._parse(batch, report)
                    for text in texts:
                        yield text
                    if failure:
                        raise failure
                    if ended:
                        break
                else:
                    exhausted = True
            if exhausted:
                raise UpstreamProtocolError(
                    f"stream ended before {self.end_event_name}", provider=self.entry_name
                )
        except UpstreamStatusError as error:
            refined = self.classify_status_error(error, upstream_model)
            if refined is error:
                raise
            raise refined from error
        finally:
            await batches.aclose()

    def _parse(
        self, batch: list[SSEEvent], report: StreamReport
    ) -> tuple[list[str], bool, PolyrouteError | None]:
        """The texts in ``batch``, whether the upstream ended the answer there, and the
        error a later event in it raised: returned, not raised, so that the text the
        upstream sent before it is delivered first."""
        texts: list[str] = []
        for event in batch:
            try:
                result = self.parse_event(event, report)
            except PolyrouteError as error:
                return texts, False, error
            if isinstance(result, str):
                if result:
                    texts.append(result)
            elif result is STREAM_END:
                return texts, True, None
        return texts, False, None


def _label(self_or_cls: Any) -> str:
    if isinstance(self_or_cls, type):
        return str(getattr(self_or_cls, "name", None) or self_or_cls.__name__)
    return str(self_or_cls.entry_name)
