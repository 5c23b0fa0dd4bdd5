"""Structured events: how the library emits them, and how an application shows them.

The library never configures logging on import. Its events go through structlog
into the standard ``logging`` logger ``"polyroute"``, which carries a
``NullHandler``: silent until the application (the CLI's ``-v``, or the user's own
logging or structlog setup) makes them visible. :func:`configure_logging` is that
one-call setup, with redaction of secrets as its last processor before rendering.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

from polyroute.core.redaction import redact_value

LOGGER_NAME = "polyroute"
_stdlib_logger = logging.getLogger(LOGGER_NAME)
_stdlib_logger.addHandler(logging.NullHandler())


def get_logger(**initial: Any) -> Any:
    """A structlog logger writing to the ``polyroute`` stdlib logger.

    Processing follows the global structlog configuration, so an application's
    ``structlog.configure`` (and ``structlog.testing.capture_logs``) sees our events.
    """
    return structlog.wrap_logger(_stdlib_logger, **initial)


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
) -> None:
    """Show polyroute's events on ``stream`` (stderr by default).

    ``fmt="auto"`` renders for humans on a terminal and as JSON lines otherwise.
    Calling it again replaces the previous setup.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
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
