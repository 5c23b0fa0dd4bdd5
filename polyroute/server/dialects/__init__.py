"""The client dialects the gateway speaks, one module each: OpenAI's chat completions
(``chat``), Anthropic's Messages (``messages``) and OpenAI's Responses (``responses``).

A dialect is a translation, not a second router. Its :class:`Dialect` reads a request
body into an :class:`Exchange`: what to ask the router (model, chat messages, options,
and the request as written, for entries of the client's own format), and how to
answer in the dialect: a whole body, or events written from the router's typed deltas.
Relays, limits and accounting stay below, in the router and the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from polyroute.core.deltas import Delta
from polyroute.core.errors import InvalidRequestError, PolyrouteError
from polyroute.core.request import NativeRequest
from polyroute.core.wire import WireFormat
from polyroute.router.stream import RouterStream
from polyroute.server.dialects.errors import WireError


class Records(Protocol):
    """Where a dialect keeps what must outlive a request (stored responses)."""

    async def put_record(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def get_record(self, key: str) -> bytes | None: ...


class Exchange(Protocol):
    """One request in a dialect: what the router is asked, and how the answer is written.

    :meth:`opening` comes first, once the first deltas are there. A streamed answer
    then gets :meth:`encode` for each upstream read, and :meth:`closing` (the answer is
    complete) or :meth:`failure` (it cannot be completed); a whole one gets
    :meth:`collect` for each read, then :meth:`whole`.
    """

    model: str | None
    messages: Any
    options: dict[str, Any]
    native: NativeRequest | None
    stream: bool

    @property
    def pass_through(self) -> tuple[WireFormat, ...] | None:
        """The formats whose text chunks the answer takes as they came
        (``Router.stream(pass_through=...)``): its own, relayed as their bytes, and
        others whose texts it writes in its own events."""
        ...

    def opening(self, stream: RouterStream, request_id: str) -> list[bytes]:
        """The events that begin a streamed answer."""
        ...

    def collect(self, batch: list[Delta]) -> None:
        """Take ``batch`` into a whole (non-streamed) answer."""
        ...

    async def whole(self, stream: RouterStream, request_id: str) -> dict[str, Any]:
        """The non-streamed answer's body, once ``stream`` is consumed."""
        ...

    def encode(self, batch: list[Delta], out: list[bytes]) -> None:
        """Append the events for ``batch`` to ``out``."""
        ...

    async def closing(self, stream: RouterStream) -> bytes:
        """The events that end a complete answer."""
        ...

    def failure(self, error: WireError) -> bytes:
        """The event that ends an answer which cannot be completed."""
        ...


class Dialect(Protocol):
    """One client wire format, as the gateway serves it on one endpoint."""

    name: str
    """The ``endpoint`` label of the access log and metrics."""

    async def read(self, body: Any, headers: Mapping[str, str]) -> Exchange:
        """The request in ``body`` (decoded JSON); raises :class:`InvalidRequestError`
        (or another :class:`PolyrouteError`) naming what is wrong."""
        ...

    def error(self, error: PolyrouteError) -> WireError:
        """``error`` as this dialect's clients expect it (status and body)."""
        ...

    def refusal(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> WireError:
        """A refusal of the gateway's own (a bad key, bad JSON, a body too large);
        ``param`` names the request's field at fault, where the dialect says it."""
        ...


def model_and_stream(body: Any) -> tuple[str | None, bool]:
    """What every dialect's body holds alike: the model asked for (``None``: the
    default) and whether to stream; raises :class:`InvalidRequestError` when the body
    is not an object or either is of the wrong type."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError("model: must be a string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise InvalidRequestError("stream: must be true or false")
    return model, bool(stream)


@dataclass
class Translation:
    """A client's request in the router's chat shape: messages (as dicts, validated by
    the router), options, and what could not be carried (``lost``, without repeats)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)

    def lose(self, what: str) -> None:
        if what not in self.lost:
            self.lost.append(what)
