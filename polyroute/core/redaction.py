"""Scrubbing secrets out of text before it reaches a log, an exception or a repr.

Two mechanisms, because neither alone is enough:
- patterns catch the shapes secrets usually have (credentials inside URLs,
  ``Authorization`` header values, ``sk-...`` style keys);
- known secrets catch the rest: whoever reads a key from the environment calls
  :func:`register_secret`, and every later occurrence of that exact value is masked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@:]*(?::[^/\s@]*)?@")
_AUTH_VALUE = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{4,}")
# pr-: the gateway's own keys (created by its admin API: one pattern rather than a
# registered value each, which every redact() would have to look for).
_KEY_LIKE = re.compile(r"\b(sk|pk|rk|gsk|xai|or|pr)-[A-Za-z0-9_-]{8,}")
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie"}
)

_known_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that :func:`redact` masks it wherever it appears.

    Values shorter than 4 characters are ignored: masking them would mangle ordinary text.
    """
    if value and len(value) >= 4:
        _known_secrets.add(value)


def redact(text: str) -> str:
    """Return ``text`` with credentials, auth values and registered secrets masked."""
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "@" in text:
        text = _URL_CREDENTIALS.sub(rf"\g<scheme>{MASK}@", text)
    text = _AUTH_VALUE.sub(rf"\1 {MASK}", text)
    return _KEY_LIKE.sub(MASK, text)


def redact_value(value: Any) -> Any:
    """Redact strings, recursing into dicts, lists and tuples; other values unchanged."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {
            key: MASK if str(key).lower() in _SECRET_HEADERS else redact_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item) for item in value)
    return value
