"""Request headers the gateway cannot use, told as the client's mistake (400 or 401).

aiohttp hands header values over as text, the bytes that are not UTF-8 as lone
surrogates: one such byte in ``Authorization`` used to fail the key comparison with a
500. A value that is not ASCII is refused before anything reads it (HTTP's field
values are ASCII; other bytes are obsolete, RFC 9110 section 5.5); an ``Authorization``
that is not ``Bearer <key>`` is named as such when keys are required.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from polyroute.core.errors import clipped

KEY_HEADERS = frozenset({"authorization", "x-api-key"})


@dataclass(frozen=True, slots=True)
class BadHeader:
    """A refusal for a header: its status, code and message."""

    status: int
    code: str
    message: str


def bad_header(headers: Mapping[str, str]) -> BadHeader | None:
    """The refusal of the first header whose value is not ASCII (401 for a key's
    header), else ``None``."""
    for name, value in headers.items():
        if value.isascii():
            continue
        if name.lower() in KEY_HEADERS:
            message = (
                f"the {name} header holds bytes that are not ASCII: a gateway key is "
                "ASCII (Authorization: Bearer <key>, or x-api-key: <key>)"
            )
            return BadHeader(401, "invalid_api_key", message)
        message = (
            f"the {clipped(name, 100)} header holds bytes that are not ASCII: send header "
            "values in ASCII (percent- or base64-encode other text)"
        )
        return BadHeader(400, "invalid_header", message)
    return None


def authorization_problem(headers: Mapping[str, str]) -> str | None:
    """What is wrong with the request's ``Authorization`` header, when it is not
    ``Bearer <key>`` (``None``: it is, or there is none)."""
    given = headers.get("Authorization")
    if given is None:
        return None
    scheme, _, key = given.strip().partition(" ")
    if scheme.lower() != "bearer":
        return (
            f"the Authorization header's scheme is {clipped(scheme, 40)!r}: "
            "use Authorization: Bearer <key>"
        )
    if not key.strip() or " " in key.strip():
        return "the Authorization header must be Bearer followed by one key"
    return None
