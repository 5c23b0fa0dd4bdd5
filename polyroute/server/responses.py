"""The gateway's JSON answers and error answers, and a request's id: written once for
the client endpoints (app.py) and the admin API (admin.py)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from polyroute.core.logging import new_request_id
from polyroute.server.dialects.errors import WireError


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(error: WireError, request_id: str) -> web.Response:
    headers = {"x-request-id": request_id}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return json_response(error.body, status=error.status, headers=headers)


def request_id_of(request: web.Request) -> str:
    """The client's ``x-request-id`` when it is a sane one (printable ASCII, at most
    128 characters), else a new id."""
    given = request.headers.get("x-request-id", "")
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return new_request_id()
