"""A client of a running gateway's admin API (``/admin``, docs/governance.md): what
``polyroute keys``, ``polyroute teams`` and ``polyroute spend`` call.

Its API may change between releases; the HTTP API is the stable surface.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import aiohttp
import orjson

from polyroute.core.errors import PolyrouteError
from polyroute.core.redaction import register_secret

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 30.0


class AdminApiError(PolyrouteError):
    """The admin API refused a call, or could not be reached (``status`` ``None``):
    ``status`` and ``code`` are the gateway's, the message is its message."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)

    @property
    def is_usage(self) -> bool:
        """The call itself was wrong (a bad value, a missing or wrong admin key)."""
        return self.status in (400, 401, 403)


class AdminClient:
    """Calls ``url``'s admin API with ``admin_key``; use as ``async with``."""

    def __init__(self, url: str, admin_key: str) -> None:
        register_secret(admin_key)
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_key}"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        self._session = aiohttp.ClientSession(timeout=timeout, headers=self._headers)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        """The decoded answer of ``method path``; raises :class:`AdminApiError`."""
        assert self._session is not None, "use AdminClient in async with"
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._session.request(
                method, self.url + path, data=data, params=query, headers=headers
            ) as answer:
                raw = await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as failure:
            reason = str(failure) or type(failure).__name__
            raise AdminApiError(
                f"cannot reach the gateway at {self.url} ({reason}): is polyroute serve "
                "running there (--url)?"
            ) from None
        try:
            decoded = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            decoded = None
        if status >= 400:
            error = decoded.get("error") if isinstance(decoded, dict) else None
            if not isinstance(error, dict):
                raise AdminApiError(f"HTTP {status} from {self.url}{path}", status)
            message = str(error.get("message") or f"HTTP {status}")
            if status == 404 and error.get("code") == "not_found":
                message = f"{self.url} has no admin API (is gateway.admin_key_env set?)"
            raise AdminApiError(message, status, error.get("code"))
        return decoded
