"""The exact response cache: a whole answer stored under a hash of its request.

Exact, not semantic: a request replays an answer only when its model, messages,
options and extra body are the same (docs/cache.md says why). The cache never fails a
request: a value over ``max_entry_bytes`` is not stored (counted in ``dropped``), and
a Redis that does not answer is a miss or a skipped store (``cache.unavailable``,
logged once per outage).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from polyroute.core.deltas import (
    AssistantMessage,
    Delta,
    FinishDelta,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageDelta,
)
from polyroute.core.errors import ConfigError
from polyroute.core.logging import get_logger
from polyroute.core.redaction import redact, register_secret
from polyroute.core.request import ChatRequest
from polyroute.router.config import CacheConfig, CacheMode

_log = get_logger()
_TIMEOUT_S = 1.0
"""A Redis slower than this is a miss: a replay must not be slower than the upstream."""


def cache_key(model: str, request: ChatRequest) -> str:
    """The entry of ``request`` for the resolved ``model``: sha256 of what decides the
    answer (``stream`` never does)."""
    native = None
    if request.native is not None:
        body = {k: v for k, v in request.native.body.items() if k not in ("stream", "model")}
        native = {"format": request.native.format, "body": body}
    identity = {
        "model": model,
        "messages": [message.model_dump(exclude_none=True) for message in request.messages],
        "options": request.options,  # never holds `stream`: no request option is named so
        "extra_body": request.extra_body,
        "native": native,
    }
    data = orjson.dumps(identity, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(data).hexdigest()


class ResponseCache:
    """Stored answers by key (bytes), with a time to live. ``get`` and ``put`` never
    raise for the store's own failures."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.dropped = 0
        """Answers not stored: over ``max_entry_bytes``."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or ``None`` (never stored, expired, or the
        store unreachable)."""
        raise NotImplementedError

    async def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` for ``ttl_s``; a value over
        ``max_entry_bytes`` is dropped and counted."""
        if len(value) > self.config.max_entry_bytes:
            self.dropped += 1
            _log.info("cache.too_large", bytes=len(value), max=self.config.max_entry_bytes)
            return
        await self._put(key, value)

    async def _put(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    def put_later(self, key: str, value: bytes) -> None:
        """:meth:`put` in a background task: a stream does not wait on the store."""
        task = asyncio.get_running_loop().create_task(self.put(key, value))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the stores under way (:meth:`put_later`)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Finish the stores under way, then close the connections."""
        await self.settle()


class MemoryCache(ResponseCache):
    """This process's cache: least recently used entries go past ``max_bytes``."""

    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config)
        self.bytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if self._clock() >= expires:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def _put(self, key: str, value: bytes) -> None:
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (self._clock() + self.config.ttl_s, value)
        self.bytes += len(value)
        while self.bytes > self.config.max_bytes and self._entries:
            self._remove(next(iter(self._entries)))

    def _remove(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.bytes -= len(value)


class RedisCache(ResponseCache):
    """A cache shared by every process using the same Redis and prefix: one ``GET`` or
    ``SET ... PX`` per request, on a client of its own."""

    def __init__(self, config: CacheConfig, url: str) -> None:
        # Imported here, not with the module: redis takes about 90 ms to import, which
        # every `polyroute` command would pay without a Redis cache.
        try:
            import redis.asyncio as aioredis
            from redis.exceptions import RedisError
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigError(
                "cache.backend redis needs the redis package: pip install 'polyroute[redis]'"
            ) from None
        super().__init__(config)
        register_secret(urlsplit(url).password)
        self.url = redact(url)
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
        )
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._down = False

    async def get(self, key: str) -> bytes | None:
        try:
            value: Any = await self._client.get(self._name(key))
        except self._errors as error:
            self._unavailable("get", error)
            return None
        self._down = False
        return bytes(value) if value is not None else None

    async def _put(self, key: str, value: bytes) -> None:
        ttl_ms = max(1, round(self.config.ttl_s * 1000))
        try:
            await self._client.set(self._name(key), value, px=ttl_ms)
        except self._errors as error:
            self._unavailable("put", error)
            return
        self._down = False

    async def aclose(self) -> None:
        await super().aclose()
        await self._client.aclose(close_connection_pool=True)

    def _name(self, key: str) -> str:
        return f"{self.config.prefix}:{key}"

    def _unavailable(self, op: str, error: BaseException) -> None:
        if not self._down:
            self._down = True
            reason = f"{type(error).__name__}: {error}"
            _log.warning("cache.unavailable", url=self.url, op=op, reason=redact(reason))


def build_cache(config: CacheConfig | None, state_url: str) -> ResponseCache | None:
    """The cache ``config`` asks for (``None``: no cache)."""
    if config is None:
        return None
    if config.backend == "redis":
        return RedisCache(config, config.url or state_url)
    return MemoryCache(config)


@dataclass(frozen=True, slots=True)
class CachePlan:
    """How one request uses the cache: ``mode`` (use or refresh) and its ``key``."""

    cache: ResponseCache
    mode: CacheMode
    key: str


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A stored answer: who served it, its deltas to replay, and its usage."""

    provider: str | None
    model: str | None
    deltas: list[Delta]
    usage: Usage | None


def encode_answer(
    provider: str | None,
    model: str | None,
    message: AssistantMessage,
    finish_reason: str | None,
    usage: Usage | None,
) -> bytes:
    """A whole answer as the bytes the cache stores."""
    return orjson.dumps(
        {
            "provider": provider,
            "model": model,
            "content": message.content,
            "reasoning": message.reasoning,
            "tool_calls": [[c.id, c.name, c.arguments] for c in message.tool_calls],
            "finish_reason": finish_reason,
            "usage": usage.as_dict() if usage is not None else None,
        }
    )


def decode_answer(value: bytes) -> StoredAnswer | None:
    """What :func:`encode_answer` stored; ``None`` for bytes that are not such an answer
    (another version's, say): a miss."""
    try:
        data = orjson.loads(value)
        deltas: list[Delta] = []
        if data["reasoning"]:
            deltas.append(ReasoningDelta(data["reasoning"]))
        if data["content"]:
            deltas.append(TextDelta(data["content"]))
        for index, (call_id, name, arguments) in enumerate(data["tool_calls"]):
            deltas.append(ToolCallDelta(index, id=call_id, name=name, arguments=arguments))
        if data["finish_reason"]:
            deltas.append(FinishDelta(data["finish_reason"]))
        usage = None
        if data["usage"] is not None:
            got = Usage.from_openai(data["usage"])
            details = {**got.details, "cached": True}
            usage = Usage(got.prompt_tokens, got.completion_tokens, got.total_tokens, details)
            deltas.append(UsageDelta(usage))
        return StoredAnswer(data["provider"], data["model"], deltas, usage)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
