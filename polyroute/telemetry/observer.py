""":class:`Tracing`: OpenTelemetry as one of the router's observers.

Importable without the ``otel`` extra (``polyroute`` exports it): the SDK is imported
when one is made, and its absence is a :class:`ConfigError` that says what to install.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from polyroute.core.errors import ConfigError
from polyroute.router.observe import RequestRecord, RequestStart, RequestWatch
from polyroute.telemetry.config import TelemetryConfig, load_telemetry_config

if TYPE_CHECKING:
    from polyroute.telemetry.pipeline import Pipeline

INSTALL = "pip install 'polyroute[otel]'"


class Tracing:
    """OpenTelemetry traces and GenAI metrics of every request a router routes, sent
    over OTLP/HTTP (docs/observability.md#opentelemetry): ``Router(observers=
    [Tracing(...)])`` or ``router.observe(tracing)``.

    ``config``: a :class:`TelemetryConfig` or its mapping (``otlp_endpoint``,
    ``service_name``, ``sample_ratio``); what it leaves out comes from the standard
    ``OTEL_*`` variables. ``server``: the requests are a gateway's (``SERVER`` spans
    named by their route). A request's span is an ``INTERNAL`` ``chat {model}`` span
    otherwise, the child of the client's ``traceparent`` (``RequestLabels``) or of the
    caller's current OpenTelemetry span; each attempt is a ``CLIENT`` child.

    Spans are built when a request ends and exported in a background thread: nothing
    of it runs per chunk, and an exporter that fails (a collector down) is logged by
    the SDK and never reaches a request. :meth:`aclose` (or ``async with``) exports
    what is left. Raises :class:`ConfigError` for a bad setting, or when the ``otel``
    extra is not installed.
    """

    def __init__(
        self, config: TelemetryConfig | Mapping[str, Any] | None = None, *, server: bool = False
    ) -> None:
        settings = load_telemetry_config(config)
        try:
            from polyroute.telemetry.pipeline import Pipeline
        except ImportError as error:
            raise ConfigError(
                f"telemetry: OpenTelemetry is not installed ({error}): {INSTALL}"
            ) from None
        self._pipeline: Pipeline = Pipeline(settings, server=server)

    def watch(self, start: RequestStart) -> RequestWatch:
        """The request's trace, settled as it starts (the router asks)."""
        return self._pipeline.watch(start)

    def request_ended(self, record: RequestRecord) -> None:
        """Spans and metrics of a request nobody watched as it ran (a gateway's refusal,
        a record made by hand): the request's span has no child but its attempts'."""
        self._pipeline.record(record, None)

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Export the spans and metrics that wait now; whether all went within
        ``timeout_s``. Blocks: from async code, ``await asyncio.to_thread(...)``."""
        return self._pipeline.force_flush(timeout_s)

    def shutdown(self) -> None:
        """Export what waits and stop the exporters (blocks; later requests are not
        exported). Safe to call twice."""
        self._pipeline.shutdown()

    async def aclose(self) -> None:
        """:meth:`shutdown`, off the event loop."""
        await asyncio.to_thread(self.shutdown)

    async def __aenter__(self) -> Tracing:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
