"""The ``store:`` and ``logs:`` sections of the gateway's configuration (docs/store.md,
docs/observability.md).

No secret lives here: PostgreSQL's DSN is read from the environment variable that
``dsn_env`` names, when the store is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from polyroute.core.errors import ConfigError, describe_validation_error
from polyroute.core.schema import StrictModel


class StoreConfig(StrictModel):
    """Where teams, keys and the spend ledger are kept: a SQLite file, or PostgreSQL."""

    backend: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="sqlite: one file, one host; postgres: shared by every gateway"
    )
    path: str = Field(
        "polyroute.db",
        min_length=1,
        description="sqlite only: the database file, relative to the working directory",
    )
    dsn_env: str | None = Field(
        None,
        min_length=1,
        validate_default=True,
        description="postgres only (required): the environment variable holding the "
        "postgresql:// DSN",
    )

    @field_validator("path")
    @classmethod
    def _path_is_for_sqlite(cls, value: str, info: ValidationInfo) -> str:
        # Runs only for a path given explicitly: the default is not validated.
        if info.data.get("backend") == "postgres":
            raise ValueError("path applies to backend sqlite only; postgres uses dsn_env")
        return value

    @field_validator("dsn_env")
    @classmethod
    def _dsn_env_is_for_postgres(cls, value: str | None, info: ValidationInfo) -> str | None:
        backend = info.data.get("backend")
        if backend == "postgres" and value is None:
            raise ValueError(
                "required with backend postgres: the name of an environment variable "
                "holding the DSN (postgresql://user:password@host:5432/database)"
            )
        if backend == "sqlite" and value is not None:
            raise ValueError("dsn_env applies to backend postgres only")
        return value


class LogsConfig(StrictModel):
    """The request log (docs/observability.md): one record per request, kept in the
    store. Without a store there is none."""

    enabled: bool = Field(True, description="log every request to the store (when one is set)")
    retention_days: float = Field(
        30.0, gt=0, description="records older than this are deleted, in the background"
    )
    max_queued: int = Field(
        20_000,
        ge=1,
        description="records waiting for the store at most (while it is down); beyond, "
        "dropped and counted (polyroute_log_dropped_total)",
    )


def load_store_config(data: Mapping[str, Any] | None) -> StoreConfig:
    """The ``store:`` mapping of a configuration as a :class:`StoreConfig` (``None``:
    the defaults). Raises :class:`ConfigError` naming the key path (``store.dsn_env``)."""
    try:
        return StoreConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "store.", StoreConfig)) from None
