"""The provider contract: what every upstream module declares, and the one streaming
machine they all share.

A provider is data plus a few small functions. Class attributes say where the
upstream lives, what it serves and what it can do (the ``supports_*`` flags);
:meth:`Provider.build_request` turns a :class:`ChatRequest` into the JSON body;
:meth:`Provider.parse_event` turns one decoded event into deltas and says whether
the answer ended there. HTTP, framing, timeouts and status errors come from
``polyroute.core``. The g4f-style ``create_async_generator`` lives in
``polyroute.providers.compat``, not here.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Generic, NamedTuple, NoReturn, TypeVar
from urllib.parse import urlsplit

from polyroute.core.deltas import CONTENT_DELTAS, Delta, WireDelta
from polyroute.core.embeddings import Embedded, EncodingFormat
from polyroute.core.errors import (
    CapabilityNotSupportedError,
    ConfigError,
    InvalidRequestError,
    ModelNotSupportedError,
    PolyrouteError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from polyroute.core.http import (
    AnswerEnd,
    SessionOwner,
    Timeouts,
    fetch_answer,
    stream_event_batches,
)
from polyroute.core.logging import get_logger
from polyroute.core.messages import Messages
from polyroute.core.overload import own_timeout
from polyroute.core.ratelimit import exhausted_for
from polyroute.core.redaction import redact, register_secret
from polyroute.core.request import CAPABILITY_FLAGS, Capability, ChatRequest
from polyroute.core.sse import Framing, SSEEvent
from polyroute.core.wire import Relayed, WireFormat

_log = get_logger()
_JSON_HEADERS = {"accept": "application/json", "content-type": "application/json"}
_R = TypeVar("_R")
EventParser = Callable[[SSEEvent, list[Delta]], bool]
"""Turns one event into deltas (appended to the list); True when the answer ended."""


class hybridmethod(Generic[_R]):  # noqa: N801 - named like the builtins it stands beside
    """Like ``classmethod``, but bound to the instance when called on one."""

    def __init__(self, func: Callable[..., _R]) -> None:
        self.__func__ = func
        self.__doc__ = func.__doc__

    def __get__(self, instance: object, owner: type | None = None) -> Callable[..., _R]:
        return types.MethodType(self.__func__, owner if instance is None else instance)


class Provider:
    """One upstream API. Class attributes are the defaults; constructor keywords
    override them for that instance (one configured entry) only.

    A configured instance keeps one connection pool across requests until
    ``await provider.aclose()`` or the end of ``async with``.
    """

    type_name: ClassVar[str | None] = None
    """The registry type (``"darkai"``). An instance's own name, the configured entry
    (``name=`` at construction, ``name:`` in a config), is ``entry_name``."""

    url: str | None = None
    api_endpoint: str | None = None
    working: bool = False
    supports_stream: bool = True
    supports_system_message: bool = False
    supports_message_history: bool = False
    needs_auth: bool = False
    supports_continuation: bool = False
    """Can take over an answer another provider began (``continue_from=``)."""
    supports_tools: bool = False
    """Takes ``tools``/``tool_choice`` and conversations with tool calls in them."""
    supports_vision: bool = False
    """Takes content parts other than text (images, audio, files)."""
    supports_json_schema: bool = False
    """Takes ``response_format: {type: json_schema}``."""
    supports_prefill: bool = False
    """Continues a final assistant message (so a cut answer is handed over as one).
    A router entry may refine it per model and learn a model's refusal (docs/relay.md)."""
    prompt_format: bool = False
    """Takes one prompt rather than chat messages: a continuation is the prompt with
    the partial answer after its last ``Assistant:`` cue (neither prefill nor an
    instruction)."""
    supports_embeddings: bool = False
    """Turns texts into vectors (:meth:`embed`)."""
    prices_from: ClassVar[str | None] = None
    """The provider of this type's own API in genai-prices' catalogue (``"openai"``),
    where a model is looked up after the provider its ``base_url`` points at and the one
    its name suggests (polyroute.core.pricing); ``None``: no catalogue price (free
    upstreams; an entry's ``price`` gives one)."""
    base_url: str | None = None
    """The root of the upstream's API, for the types that are configured by one."""
    default_model: str | None = None
    models: list[str] = []
    model_aliases: dict[str, str] = {}
    timeouts: Timeouts = Timeouts()
    """Class default: 10 s to connect, 600 s in all."""
    headers: Mapping[str, str] = {}
    """Headers sent with every request, before per-instance ``headers``."""
    framing: ClassVar[Framing] = "events"
    """``events``: SSE events end at a blank line; ``lines``: every ``data:`` line is one."""
    wire_format: ClassVar[WireFormat | None] = None
    """The consumers' format in which this type can relay plain text chunks as the
    upstream sent them (``Router.stream(pass_through=...)``, core/wire.py)."""
    end_event_name: ClassVar[str] = "the end-of-stream event"
    """How errors name the event that ends a complete answer."""
    accepted_options: ClassVar[frozenset[str] | None] = None
    """The request options (OpenAI's names) this type sends on; ``None``: every one.
    The others are dropped, and :meth:`dropped` names them."""
    native_format: ClassVar[str | None] = None
    """The wire format (``"anthropic"``) whose client requests this type sends on as
    they were written (:class:`NativeRequest`), rather than translated."""

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
        supports_tools: bool | None = None,
        supports_vision: bool | None = None,
        supports_json_schema: bool | None = None,
        supports_prefill: bool | None = None,
        supports_embeddings: bool | None = None,
    ) -> None:
        self.entry_name = name or type(self).type_name or type(self).__name__
        self.on_rate_limit: Callable[[str, float], None] | None = None
        """Told (entry name, seconds) when an answer's headers say the upstream has no
        requests or tokens left until then (the router's state listens)."""
        self.timeouts = type(self).timeouts.merged(timeout)
        self.proxy = proxy
        if proxy:
            # A proxy password must be masked wherever it is echoed, not only in URL form.
            register_secret(_proxy_password(proxy))
        self.headers = {**type(self).headers, **(headers or {})}
        if api_key:
            register_secret(api_key)
            self.headers.update(self.auth_headers(api_key))
        overrides = {
            "api_endpoint": api_endpoint,
            "working": working,
            "models": None if models is None else list(models),
            "model_aliases": None if model_aliases is None else dict(model_aliases),
            "supports_tools": supports_tools,
            "supports_vision": supports_vision,
            "supports_json_schema": supports_json_schema,
            "supports_prefill": supports_prefill,
            "supports_embeddings": supports_embeddings,
        }
        for attribute, value in overrides.items():
            if value is not None:
                setattr(self, attribute, value)
        if default_model is not None:
            self.default_model = default_model
        elif self.models and self.default_model not in self.models:
            # An entry restricted to other models must not default to one it rejects.
            self.default_model = self.models[0]
        self._sessions = SessionOwner(limit=connection_limit)

    def __repr__(self) -> str:
        # Headers and the proxy may carry credentials: show neither in full.
        proxy = f", proxy={redact(self.proxy)!r}" if self.proxy else ""
        return (
            f"{type(self).__name__}(name={self.entry_name!r}, "
            f"api_endpoint={self.api_endpoint!r}{proxy})"
        )

    async def __aenter__(self) -> Provider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close this instance's connection pool. Safe to call twice."""
        await self._sessions.aclose()

    # Models and capabilities -------------------------------------------------------

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

    def lacks(self, needs: frozenset[Capability]) -> list[Capability]:
        """The capabilities in ``needs`` this provider does not have, sorted."""
        return sorted(need for need in needs if not getattr(self, CAPABILITY_FLAGS[need]))

    def takes_native(self, request: ChatRequest) -> bool:
        """Whether ``request`` came in this type's own wire format (sent as written)."""
        native = request.native
        return native is not None and native.format == self.native_format

    def dropped(self, request: ChatRequest) -> list[str]:
        """What of ``request`` this entry does not send on: what a client's request
        lost in its translation to the chat shape, then the options this type does
        not take. Empty for a request in this type's own format."""
        if self.takes_native(request):
            return []
        native = request.native
        dropped = list(native.lost) if native is not None else []
        accepted = self.accepted_options
        if accepted is not None and request.options:
            dropped += sorted(name for name in request.options if name not in accepted)
        return dropped

    # What a provider module fills in ---------------------------------------------

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """Headers that carry ``api_key``; bearer authentication unless overridden."""
        return {"Authorization": f"Bearer {api_key}"}

    def request_url(self, model: str) -> str | None:
        """Where requests for ``model`` go: ``api_endpoint`` unless overridden."""
        return self.api_endpoint

    def build_request(
        self, model: str, request: ChatRequest, *, continue_from: str | None = None
    ) -> dict[str, Any]:
        """The JSON body for ``model`` (the upstream's name) and ``request``.

        ``continue_from`` (only passed when ``supports_continuation``) is a partial
        answer the upstream must carry on from, without repeating it. A chat-format
        type that can continue by prefill also takes ``prefill=`` (passed only with
        ``continue_from``, and only to entries that allow prefill): ``True`` ends the
        conversation with the partial assistant message, ``False`` adds an instruction
        to continue after it. The caller's ``extra_body`` is merged over the result
        afterwards.
        """
        raise NotImplementedError

    def request_headers(self, request: ChatRequest) -> Mapping[str, str]:
        """The headers of the upstream request for ``request``: ``headers`` unless a
        module passes some of a native request's own on."""
        return self.headers

    def parse_event(self, event: SSEEvent, out: list[Delta]) -> bool:
        """Append the deltas ``event`` carries to ``out``; True when it ends the answer.

        Raise :class:`UpstreamProtocolError` for data that breaks the wire format, or
        the matching typed error for an error the upstream reports inside the stream.
        """
        raise NotImplementedError

    def stream_parser(self, continue_from: str | None = None) -> EventParser:
        """The event parser for one answer (which continues ``continue_from``, if given):
        :meth:`parse_event` unless the wire format needs state across events
        (Anthropic's content blocks), in which case a module returns a fresh parser."""
        return self.parse_event

    def classify_status_error(self, error: UpstreamStatusError, model: str) -> PolyrouteError:
        """A more precise error for a non-2xx answer, read from its body (``error.body``).

        The default keeps the status-based error; OpenAI-style upstreams tell a missing
        model or an over-long context apart here.
        """
        return error

    async def count_tokens(self, model: str, request: ChatRequest) -> int | None:
        """The upstream's own count of ``request``'s input tokens for ``model``, or
        ``None`` for types that cannot count (the caller estimates)."""
        return None

    @property
    def models_url(self) -> str | None:
        """Where :meth:`discover_models` asks; ``None`` for types that cannot."""
        return None

    async def discover_models(self) -> list[str]:
        """Ask the upstream which models it serves (``GET models_url``) and use that
        list as ``models``.

        Raises :class:`ConfigError` for provider types that cannot list their models,
        and :class:`UpstreamProtocolError` for a list that :meth:`model_ids` cannot read.
        """
        if self.models_url is None:
            raise ConfigError(f"provider {self.entry_name!r} cannot discover its models")
        _raw, listing = await fetch_answer(
            self._sessions.session,
            self.models_url,
            provider=self.entry_name,
            headers={k: v for k, v in self.headers.items() if k.lower() != "content-type"},
            proxy=self.proxy,
            timeouts=self.timeouts,
        )
        try:
            self.models = sorted(self.model_ids(listing))
        except (KeyError, TypeError, AttributeError) as error:
            raise UpstreamProtocolError(
                f"malformed model list ({type(error).__name__}: {error})", provider=self.entry_name
            ) from None
        return self.models

    def model_ids(self, listing: Any) -> Iterator[str]:
        """The model names in the body of ``GET models_url``: ``data[].id`` (OpenAI's
        and Anthropic's shape) unless overridden."""
        return (str(item["id"]) for item in listing["data"])

    # Embeddings --------------------------------------------------------------------

    async def embed(
        self,
        model: str,
        inputs: list[str],
        *,
        dimensions: int | None = None,
        encoding_format: EncodingFormat = "float",
    ) -> Embedded:
        """One vector per text of ``inputs``, in their order, from ``model`` (the
        upstream's name: resolve a user's name with :meth:`get_model` first), of
        ``dimensions`` numbers each when given (models that can shorten their vectors).
        ``encoding_format`` is the form asked of an upstream that has a choice (see
        :mod:`polyroute.core.embeddings`); the vectors read in either form.

        Raises :class:`CapabilityNotSupportedError` (before anything is sent) for a
        provider without ``supports_embeddings``, :class:`InvalidRequestError` for no
        inputs or a ``dimensions`` below 1, the typed :class:`UpstreamError` subclasses
        that :meth:`stream` raises for the same upstream answers (a missing model, 429,
        401...), and :class:`UpstreamProtocolError` for an answer it cannot read.
        """
        if not self.supports_embeddings:
            raise CapabilityNotSupportedError(["embeddings"], provider=self.entry_name, model=model)
        if not inputs or not all(isinstance(text, str) for text in inputs):
            raise InvalidRequestError("embeddings need a non-empty list of strings as inputs")
        if dimensions is not None and (isinstance(dimensions, bool) or dimensions < 1):
            raise InvalidRequestError(f"dimensions must be a positive integer, not {dimensions!r}")
        url, body = self.embeddings_request(model, inputs, dimensions, encoding_format)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _JSON_HEADERS}
        try:
            raw, answer = await fetch_answer(
                self._sessions.session,
                url,
                provider=self.entry_name,
                headers={**headers, **_JSON_HEADERS},
                proxy=self.proxy,
                timeouts=self.timeouts,
                body=body,
            )
        except UpstreamStatusError as error:
            self._raise_classified(error, model)
        try:
            embedded = self.read_embeddings(answer)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            detail = f"missing key {error}" if isinstance(error, KeyError) else str(error)
            raise UpstreamProtocolError(
                f"malformed embeddings answer ({detail})", provider=self.entry_name
            ) from None
        if len(embedded) != len(inputs):
            raise UpstreamProtocolError(
                f"{len(embedded)} embeddings for {len(inputs)} inputs", provider=self.entry_name
            )
        if self.relayable(answer, model, encoding_format):
            embedded.body = raw
        return embedded

    def embeddings_request(
        self, model: str, inputs: list[str], dimensions: int | None, encoding_format: EncodingFormat
    ) -> tuple[str, dict[str, Any]]:
        """Where an embeddings request goes and its JSON body. The default: this type
        has no embeddings wire format (:class:`CapabilityNotSupportedError`), which
        also covers an entry that turned ``supports_embeddings`` on for such a type."""
        raise CapabilityNotSupportedError(["embeddings"], provider=self.entry_name, model=model)

    def read_embeddings(self, answer: Any) -> Embedded:
        """The vectors (in the order of the inputs) and usage in an embeddings answer.

        Raise ``KeyError``, ``TypeError`` or ``ValueError`` (with a message naming the
        field) for an answer that breaks the format; :meth:`embed` reports it as an
        :class:`UpstreamProtocolError`.
        """
        raise NotImplementedError

    def relayable(self, answer: Any, model: str, encoding_format: EncodingFormat) -> bool:
        """Whether ``answer`` (already read by :meth:`read_embeddings`) may go to a client
        of OpenAI's embeddings API as it came (:attr:`Embedded.body`): only OpenAI's own
        format can, so no by default."""
        return False

    # Streaming ---------------------------------------------------------------------

    async def stream(
        self,
        model: str | None,
        messages: Messages,
        *,
        proxy: str | None = None,
        timeout: Timeouts | float | None = None,  # noqa: ASYNC109 - the documented override
        api_endpoint: str | None = None,
        continue_from: str | None = None,
        **params: Any,
    ) -> AsyncGenerator[Delta, None]:
        """Stream the answer to ``messages`` from ``model`` as typed deltas.

        ``params`` are request options (``tools``, ``temperature``, ``extra_body``...,
        checked before anything is sent); ``proxy``, ``timeout`` (seconds in all, or a
        :class:`Timeouts`) and ``api_endpoint`` apply to this call only. Raises the
        typed :class:`UpstreamError` subclasses; deltas already yielded stay delivered.
        Closing the generator closes the upstream response at once.
        """
        request = ChatRequest.build(messages, params)
        batches = self.stream_batches(
            self.get_model(model),
            request,
            continue_from=continue_from,
            proxy=proxy,
            timeout=timeout,
            api_endpoint=api_endpoint,
        )
        try:
            async for batch in batches:
                for delta in batch:
                    yield delta
        finally:
            await batches.aclose()

    async def stream_batches(
        self,
        model: str,
        request: ChatRequest,
        *,
        continue_from: str | None = None,
        proxy: str | None = None,
        timeout: Timeouts | float | None = None,  # noqa: ASYNC109 - the documented override
        api_endpoint: str | None = None,
        prefill: bool | None = None,
        pass_through: bool = False,
    ) -> AsyncGenerator[list[Delta], None]:
        """The machine under :meth:`stream`, for callers that resolved ``model`` (the
        upstream's name) and validated ``request`` already: deltas in one list per
        socket read, which keeps the per-chunk cost of the router down.

        The first list holds the first piece of the answer (text, reasoning or a tool
        call); ``timeouts.first_chunk`` limits the wait for it, and only for it, so a
        timeout never fires while the consumer holds the generator suspended.
        ``prefill`` says how to continue ``continue_from`` (see :meth:`build_request`);
        ``None``: as the type does by default. ``pass_through``: plain text chunks come
        as :class:`WireDelta` runs of the upstream's bytes, where the type's
        :attr:`wire_format` allows (the consumer speaks that format: core/wire.py),
        except in a continuation.
        """
        timeouts = self.timeouts.merged(timeout)
        end = AnswerEnd()
        # Not a continuation's: its first text is read (Anthropic's parser drops the
        # whitespace the prefill left out); the router never asks for both.
        relay = self.wire_format if pass_through and not continue_from else None
        post = _Post(continue_from, proxy, timeouts, api_endpoint, end, prefill, relay)
        events = self._post(model, request, post)
        parse = self.stream_parser(continue_from)
        try:
            try:
                first, ended, failure = await self._first_batch(
                    events, timeouts.first_chunk, parse, end
                )
                end.seen = ended  # before the yield: the consumer may close us there
                if first:
                    yield first
                if failure:
                    raise failure
                if not ended:
                    # `async for`, not anext(events, None): with chunks that arrive one
                    # per read, anext's default costs an awaitable object per chunk.
                    async for batch in events:
                        deltas, ended, failure = _parse(batch, parse)
                        end.seen = ended
                        if deltas:
                            yield deltas
                        if failure:
                            raise failure
                        if ended:
                            break
                    else:
                        raise UpstreamProtocolError(
                            f"stream ended before {self.end_event_name}", provider=self.entry_name
                        )
            except UpstreamStatusError as error:
                self._raise_classified(error, model)
        finally:
            await events.aclose()

    def _raise_classified(self, error: UpstreamStatusError, model: str) -> NoReturn:
        """Raise :meth:`classify_status_error`'s refinement of ``error`` (chained to
        it), or ``error`` itself when there is none."""
        refined = self.classify_status_error(error, model)
        if refined is error:
            raise error
        if isinstance(refined, UpstreamStatusError) and refined.url is None and error.url:
            refined.locate(error.url)  # made from the body alone: which URL said it
        raise refined from error

    def _post(
        self, model: str, request: ChatRequest, post: _Post
    ) -> AsyncGenerator[Sequence[Relayed], None]:
        """The request, checked and built, and the generator of its answer's events."""
        continue_from, timeouts, end = post.continue_from, post.timeouts, post.end
        self._check(request, continue_from)
        # prefill= only when asked: a custom type that never continues by prefill need
        # not take the keyword.
        how = {"prefill": post.prefill} if continue_from and post.prefill is not None else {}
        body = self.build_request(model, request, continue_from=continue_from or None, **how)
        if request.extra_body:
            body.update(request.extra_body)
        if (request.options or request.native) and (dropped := self.dropped(request)):
            _log.info("provider.options_dropped", provider=self.entry_name, options=dropped)
        url = post.api_endpoint or self.request_url(model)
        if not url:
            raise UpstreamProtocolError("no api_endpoint configured", provider=self.entry_name)
        return stream_event_batches(
            self._sessions.session,
            url,
            provider=self.entry_name,
            body=body,
            headers=self.request_headers(request),
            proxy=post.proxy or self.proxy,
            timeouts=timeouts,
            framing=self.framing,
            on_headers=self._read_rate_limit if self.on_rate_limit is not None else None,
            end=end,
            pass_through=post.pass_through,
        )

    def _read_rate_limit(self, headers: Mapping[str, str]) -> None:
        seconds = exhausted_for(headers)
        if seconds is not None and self.on_rate_limit is not None:
            self.on_rate_limit(self.entry_name, seconds)

    def _check(self, request: ChatRequest, continue_from: str | None) -> None:
        if continue_from and not self.supports_continuation:
            raise InvalidRequestError(f"provider {self.entry_name!r} cannot continue an answer")
        if request.needs and (missing := self.lacks(request.needs)):
            raise CapabilityNotSupportedError(missing, provider=self.entry_name)

    async def _first_batch(
        self,
        events: AsyncGenerator[Sequence[Relayed], None],
        limit: float | None,
        parse: EventParser,
        end: AnswerEnd | None = None,
    ) -> tuple[list[Delta], bool, PolyrouteError | None]:
        """Deltas up to and including the first piece of the answer (or the end). A
        timeout the gateway caused (``end`` still waiting for a connection slot, or its
        event loop behind) is :class:`GatewayOverloaded`, not the upstream's."""
        pending: list[Delta] = []
        since = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                async for batch in events:
                    deltas, ended, failure = _parse(batch, parse)
                    pending += deltas
                    if ended or failure or any(isinstance(d, CONTENT_DELTAS) for d in deltas):
                        return pending, ended, failure
        except UpstreamTimeout:
            raise
        except TimeoutError as error:
            waiting = end is not None and end.waiting_for_slot
            own = own_timeout(since, limit, waiting_for_slot=waiting, provider=self.entry_name)
            raise own or UpstreamTimeout(
                f"no answer within the first-chunk timeout of {limit} s",
                provider=self.entry_name,
            ) from error
        raise UpstreamProtocolError(
            f"stream ended before {self.end_event_name}", provider=self.entry_name
        )


class _Post(NamedTuple):
    """How one answer is asked for, beside the model and the request."""

    continue_from: str | None
    proxy: str | None
    timeouts: Timeouts
    api_endpoint: str | None
    end: AnswerEnd
    prefill: bool | None
    pass_through: WireFormat | None


def _parse(
    batch: Sequence[Relayed], parse: EventParser
) -> tuple[list[Delta], bool, PolyrouteError | None]:
    """The deltas in ``batch``, whether the upstream ended the answer there, and the
    error a later event in it raised: returned, not raised, so that what the upstream
    sent before it is delivered first. Text chunks relayed as they came pass as they are."""
    out: list[Delta] = []
    try:
        for event in batch:
            if isinstance(event, WireDelta):
                out.append(event)
            elif parse(event, out):
                return out, True, None
    except PolyrouteError as error:
        return out, False, error
    return out, False, None


def _proxy_password(proxy: str) -> str | None:
    try:
        return urlsplit(proxy).password
    except ValueError:
        return None


def _label(self_or_cls: Any) -> str:
    if isinstance(self_or_cls, type):
        return str(getattr(self_or_cls, "type_name", None) or self_or_cls.__name__)
    return str(self_or_cls.entry_name)
