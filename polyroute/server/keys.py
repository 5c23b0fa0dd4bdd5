"""Gateway keys: who may call, for which models, how often.

Keys are compared in constant time (against every configured key, whichever
matches) and registered as secrets so that no log line or error can show one. Their
``rpm`` is counted by the router's state: per process with ``state: memory``, across
every gateway sharing the Redis with ``state: redis`` (docs/shared-state.md).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from polyroute.core.errors import ConfigError
from polyroute.core.redaction import register_secret
from polyroute.router.config import GatewayKey


@dataclass(slots=True)
class ClientKey:
    """A configured key, resolved from its environment variable."""

    name: str
    secret: bytes
    models: frozenset[str] | None
    rpm: int | None
    cache: str | None = None
    """The response cache mode of its requests, unless they say (``x-polyroute-cache``)."""

    def allows(self, *models: str) -> bool:
        return self.models is None or any(model in self.models for model in models)


class KeyRing:
    """The gateway's keys; empty means the gateway is open (loopback only)."""

    def __init__(self, keys: Sequence[GatewayKey]) -> None:
        self.keys = [_resolve(key) for key in keys]

    def __bool__(self) -> bool:
        return bool(self.keys)

    def find(self, headers: Mapping[str, str]) -> ClientKey | None:
        """The key in ``Authorization: Bearer ...`` or, as Anthropic's clients send it,
        in ``x-api-key``; ``None`` when neither holds a configured key."""
        scheme, _, given = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            given = headers.get("x-api-key", "")
        if not given:
            return None
        presented = given.strip().encode()
        found = None
        for key in self.keys:  # every key is compared: the time says nothing of which
            if hmac.compare_digest(key.secret, presented):
                found = key
        return found


def _resolve(key: GatewayKey) -> ClientKey:
    secret = os.environ.get(key.key_env)
    if not secret:
        raise ConfigError(
            f"gateway key {key.name!r}: environment variable {key.key_env} (key_env) is not set"
        )
    register_secret(secret)
    models = frozenset(key.models) if key.models is not None else None
    return ClientKey(key.name, secret.encode(), models, key.rpm, key.cache)
