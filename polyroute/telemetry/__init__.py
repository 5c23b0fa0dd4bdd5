"""OpenTelemetry for polyroute (the ``otel`` extra; docs/observability.md#opentelemetry).

A sink wired on top, as the store is: the router never imports this package. It is
handed :class:`~polyroute.Tracing`, an observer that also watches each request live
(``polyroute.router.observe.RequestWatcher``), and builds the spans and GenAI metrics
of each request once it ended.

- ``config``: the ``telemetry:`` section, and when a gateway traces at all;
- ``observer``: :class:`~polyroute.Tracing`, the public face;
- ``attributes``: what the spans and metrics say (the GenAI conventions' names);
- ``pipeline``: the SDK's side: the watch of a request, its spans and metrics;
- ``otlp``: the spans' protobuf, encoded by hand, and the exporter that sends it.

The first three import no part of OpenTelemetry; ``pipeline`` and ``otlp`` do, and are
imported only when a :class:`~polyroute.Tracing` is made.
"""
