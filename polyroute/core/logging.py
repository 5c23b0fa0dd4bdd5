"""Structured events: how the library emits them, and how an application shows them.

The library never configures logging on import. Its events go through structlog
into the standard ``logging`` logger ``"polyroute"``, which carries a
``NullHandler``: silent until the application (the CLI's ``-v``, or the user's own
logging or structlog setup) makes them visible. :func:`configure_logging` is that
one-call setup, with redaction of secrets as its last processor before rendering.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, Literal, TextIO

import structlog

from polyroute.core.console import HumanRenderer
from polyroute.core.redaction import redact_value

LOGGER_NAME = "polyroute"
_stdlib_logger = logging.getLogger(LOGGER_NAME)
_stdlib_logger.addHandler(logging.NullHandler())


def _has_real_handler(logger: logging.Logger | None) -> bool:
    while logger is not None:
        if any(not isinstance(handler, logging.NullHandler) for handler in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def _listened(level: int) -> bool:
    """Whether an event at ``level`` can reach anyone.

    Rendering an event costs far more than routing a request's share of chunks, so
    the library skips it unless structlog was configured (by the application,
    :func:`configure_logging`, or ``structlog.testing.capture_logs``) or a stdlib
    handler other than our ``NullHandler`` would receive it.
    """
    if structlog.is_configured():
        return True
    return _stdlib_logger.isEnabledFor(level) and _has_real_handler(_stdlib_logger)


EventListener = Callable[[str, dict[str, Any]], None]
"""Told of each event a logger emits (its name and own fields), whether logged or not."""


class EventLogger:
    """Emits polyroute's structured events through structlog, when anyone listens;
    with a ``listener``, tells it of every event too (a request's watchers, tracing)."""

    __slots__ = ("_context", "_listener")

    def __init__(
        self, context: dict[str, Any] | None = None, listener: EventListener | None = None
    ) -> None:
        self._context = context or {}
        self._listener = listener

    def bind(self, **fields: Any) -> EventLogger:
        """A logger adding ``fields`` to every event (and telling the same listener)."""
        return EventLogger({**self._context, **fields}, self._listener)

    def listened(self, listener: EventListener) -> EventLogger:
        """This logger, also telling ``listener`` of every event it emits."""
        return EventLogger(self._context, listener)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warning", event, fields)

    def _emit(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if self._listener is not None:
            self._listener(event, fields)
        if not _listened(level):
            return
        # Processing follows the global structlog configuration, so an application's
        # structlog.configure (and capture_logs) sees our events.
        logger = structlog.wrap_logger(_stdlib_logger)
        getattr(logger, method)(event, **self._context, **fields)


# Request ids: a counter and a random per-process part, unique without uuid4's 4.5 us
# (measured) on every request. The counter comes first, scrambled (times an odd number:
# one-to-one modulo 2**32) from a random per-process start, so that the first 8
# characters, the short form the console shows, differ between requests in flight,
# of one process or of several.
_ID_PART = secrets.token_hex(6)
_ID_START = secrets.randbits(32)
_request_numbers = itertools.count(1)


def new_request_id() -> str:
    """An id for one request, carried by every event of it; its first 8 characters
    tell it apart from the other requests of the moment."""
    number = next(_request_numbers)
    head = (number * 0x9E3779B1 + _ID_START) & 0xFFFFFFFF
    wraps = number >> 32  # past 2**32 requests the head repeats: this keeps ids unique
    return f"{head:08x}{_ID_PART}{wraps:x}" if wraps else f"{head:08x}{_ID_PART}"


def get_logger() -> EventLogger:
    """The logger polyroute's modules emit their events with."""
    return EventLogger()


def redact_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets in every value of the event."""
    for key, value in event_dict.items():
        event_dict[key] = redact_value(value)
    return event_dict


def configure_logging(
    *,
    level: int | str = logging.INFO,
    fmt: Literal["console", "json", "auto"] = "auto",
    stream: TextIO | None = None,
    request_ids: bool = False,
) -> None:
    """Show polyroute's events on ``stream`` (stderr by default).

    ``fmt="auto"`` renders for humans on a terminal (one short line per event,
    coloured unless ``NO_COLOR`` is set) and as JSON lines otherwise. With
    ``request_ids``, each human line of a request starts with its id's first 8
    characters (a gateway serves many at once); JSON lines always carry the whole id.
    Calling it again replaces the previous setup.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = structlog.processors.JSONRenderer()
    if fmt == "console":
        # https://no-color.org: any non-empty NO_COLOR turns colour off.
        colors = stream.isatty() and not os.environ.get("NO_COLOR")
        renderer = HumanRenderer(colors=colors, request_ids=request_ids)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
        cache_logger_on_first_use=False,
    )
    for handler in list(_stdlib_logger.handlers):
        if not isinstance(handler, logging.NullHandler):
            _stdlib_logger.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    _stdlib_logger.addHandler(handler)
    _stdlib_logger.setLevel(level)
    _stdlib_logger.propagate = False
