"""The ``telemetry:`` section of a configuration (docs/observability.md#opentelemetry),
and when the gateway traces at all.

Plain pydantic: this module imports no part of OpenTelemetry, so a configuration with
``telemetry:`` loads without the ``otel`` extra (building :class:`~polyroute.Tracing`
from it then raises the :class:`ConfigError` that says what to install).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator

from polyroute.core.errors import ConfigError, describe_validation_error
from polyroute.core.schema import StrictModel

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
"""The standard variables that turn tracing on in a gateway without ``telemetry:``."""


class TelemetryConfig(StrictModel):
    """OpenTelemetry traces and GenAI metrics of every request, sent over OTLP/HTTP
    (protobuf) to a collector. Each key left out is read from the standard ``OTEL_*``
    environment variables, as the OpenTelemetry SDK reads them."""

    otlp_endpoint: str | None = Field(
        None,
        description="the collector's base URL (http://collector:4318); /v1/traces and "
        "/v1/metrics are appended. Unset: OTEL_EXPORTER_OTLP_ENDPOINT (and the "
        "per-signal variables), else http://localhost:4318",
    )
    service_name: str | None = Field(
        None,
        min_length=1,
        description="the resource's service.name; unset: OTEL_SERVICE_NAME, else polyroute",
    )
    sample_ratio: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="the share of new traces kept (by trace id); a client's traceparent "
        "decides for its own. Unset: OTEL_TRACES_SAMPLER, else every trace",
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _is_a_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"expected an http(s) base URL such as http://collector:4318, got {value!r}"
            )
        return value.rstrip("/")

    def signal_url(self, signal: str) -> str | None:
        """Where ``signal`` (``traces``, ``metrics``) is sent, when a base URL is set."""
        return f"{self.otlp_endpoint}/v1/{signal}" if self.otlp_endpoint else None


def load_telemetry_config(data: TelemetryConfig | Mapping[str, Any] | None) -> TelemetryConfig:
    """``data`` as a :class:`TelemetryConfig` (``None``: every key from the environment).
    Raises :class:`ConfigError` naming the key (``telemetry.sample_ratio``)."""
    if isinstance(data, TelemetryConfig):
        return data
    try:
        return TelemetryConfig.model_validate(dict(data or {}))
    except ValidationError as error:
        problems = describe_validation_error(error, "telemetry.", TelemetryConfig)
        raise ConfigError(problems) from None


def telemetry_in_service(
    config: TelemetryConfig | None, environ: Mapping[str, str]
) -> TelemetryConfig | None:
    """What a gateway traces with: its ``telemetry:``, else the environment's when a
    standard variable names an OTLP endpoint; ``None`` (no tracing, nothing exported)
    without either, and whenever ``OTEL_SDK_DISABLED`` is ``true``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if config is not None:
        return config
    if any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES):
        return TelemetryConfig()
    return None
