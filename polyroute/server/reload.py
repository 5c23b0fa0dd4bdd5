"""Reloading the config file while the gateway serves (SIGHUP, ``POST /admin/reload``).

A reload builds the next :class:`Generation` (router, gateway settings, config keys)
beside the running one, and the gateway installs it in one synchronous step: no request
sees half of a config. A request keeps the generation it started on to its end; a
generation replaced is retired once its last request ends, and only then are the
connection pools of the providers no later generation kept closed. What every
generation shares (the routing state with its circuits, limit windows and budgets'
spend, the response cache, the store's keys) is never rebuilt.

A file that does not load changes nothing: the error is the one ``polyroute serve``
would stop on at start. What only a restart can change (``state``, ``store``,
``cache``, ``logs``, ``gateway.max_body_bytes``, ``gateway.admin_key_env`` and the
connection limits: ``GATEWAY_NEEDS_RESTART``) keeps its running value, and the reload
says so.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from polyroute.core.errors import ConfigError
from polyroute.core.logging import get_logger
from polyroute.providers.base import Provider
from polyroute.router.config import GatewayConfig, RouterConfig, load_config
from polyroute.router.router import Router
from polyroute.server.keys import KeyRing, RuntimeKeys

_log = get_logger()

NEEDS_RESTART = ("state", "store", "cache", "logs", "telemetry")
"""Top-level keys a reload leaves as they run: the routing state and the response cache
hold what must survive (budgets' spend, circuits, stored answers), the store its
connections, the request log its writer, telemetry its exporters."""
GATEWAY_NEEDS_RESTART = (
    "max_body_bytes",
    "admin_key_env",
    "header_timeout_s",
    "keepalive_s",
    "max_connections",
    "backlog",
)
"""``gateway`` keys read once, when the HTTP application is made or starts listening."""


@dataclass(eq=False, slots=True)
class Generation:
    """One configuration in service: its router, gateway settings and keys (the config
    file's, with the store's). Counts the requests on it, so that it can be retired
    once the last one ends."""

    router: Router
    config: GatewayConfig
    keys: KeyRing
    requests: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while no request is on it."""

    def __post_init__(self) -> None:
        self.idle.set()

    def enter(self) -> Generation:
        """Count one request on it (until :meth:`leave`); itself."""
        self.requests += 1
        self.idle.clear()
        return self

    def leave(self) -> None:
        self.requests -= 1
        if not self.requests:
            self.idle.set()


@dataclass(frozen=True, slots=True)
class Changes:
    """Names a reload added, removed or changed."""

    added: list[str]
    removed: list[str]
    changed: list[str]

    @classmethod
    def between(cls, old: Mapping[str, BaseModel], new: Mapping[str, BaseModel]) -> Changes:
        return cls(
            [name for name in new if name not in old],
            [name for name in old if name not in new],
            [name for name in new if name in old and new[name] != old[name]],
        )

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def as_json(self) -> dict[str, list[str]]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}


@dataclass(frozen=True, slots=True)
class ReloadSummary:
    """What a reload changed: provider entries and gateway keys by name, the other
    settings by key path, and what needs a restart (kept as it runs)."""

    source: str
    entries: Changes
    keys: Changes
    settings: list[str]
    needs_restart: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.entries or self.keys or self.settings)

    def as_json(self) -> dict[str, Any]:
        """The answer of ``POST /admin/reload``."""
        return {
            "object": "config.reload",
            "source": self.source,
            "changed": self.changed,
            "entries": self.entries.as_json(),
            "keys": self.keys.as_json(),
            "settings": self.settings,
            "needs_restart": self.needs_restart,
        }

    def describe(self) -> str:
        """One line for people."""
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("entries added:", self.entries.added),
                ("entries removed:", self.entries.removed),
                ("entries changed:", self.entries.changed),
                ("keys added:", self.keys.added),
                ("keys removed:", self.keys.removed),
                ("keys changed:", self.keys.changed),
                ("settings changed:", self.settings),
            )
            if names
        ]
        return "; ".join(parts) or "nothing changed"


def summarize(source: str, old: RouterConfig, new: RouterConfig) -> ReloadSummary:
    """What ``new`` changes of ``old``, the running config."""
    entries = Changes.between(
        {entry.name: entry for entry in old.providers},
        {entry.name: entry for entry in new.providers},
    )
    keys = Changes.between(
        {key.name: key for key in old.gateway.keys}, {key.name: key for key in new.gateway.keys}
    )
    settings = [
        name
        for name in RouterConfig.model_fields
        if name not in ("providers", "gateway", *NEEDS_RESTART)
        and getattr(old, name) != getattr(new, name)
    ]
    settings += [
        f"gateway.{name}"
        for name in GatewayConfig.model_fields
        if name not in ("keys", *GATEWAY_NEEDS_RESTART)
        and getattr(old.gateway, name) != getattr(new.gateway, name)
    ]
    return ReloadSummary(source, entries, keys, settings, needs_restart(old, new))


def needs_restart(old: RouterConfig, new: RouterConfig) -> list[str]:
    """The keys ``new`` changes that only a restart can apply."""
    changed = [name for name in NEEDS_RESTART if getattr(old, name) != getattr(new, name)]
    return changed + [
        f"gateway.{name}"
        for name in GATEWAY_NEEDS_RESTART
        if getattr(old.gateway, name) != getattr(new.gateway, name)
    ]


def keep_running(old: RouterConfig, new: RouterConfig) -> RouterConfig:
    """``new``, with what only a restart can change as it runs in ``old``."""
    gateway = new.gateway.model_copy(
        update={name: getattr(old.gateway, name) for name in GATEWAY_NEEDS_RESTART}
    )
    kept = {name: getattr(old, name) for name in NEEDS_RESTART}
    return new.model_copy(update={**kept, "gateway": gateway})


@dataclass(slots=True)
class Prepared:
    """A reload ready to install: the next generation (``None`` when the file changes
    nothing) and what it changes."""

    generation: Generation | None
    config: RouterConfig
    summary: ReloadSummary


class ConfigReloader:
    """Re-reads ``source``, the file ``config`` (running now) came from (``None``: the
    built-in default, which has no file to re-read). ``check`` applies the rules
    ``polyroute serve`` checks at start beyond the file (raising :class:`ConfigError`);
    ``out`` gets one line per reload, for people."""

    def __init__(
        self,
        config: RouterConfig,
        source: Path | None,
        *,
        check: Callable[[RouterConfig], None] = lambda config: None,
        out: TextIO | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self._check = check
        self._out = out or sys.stderr

    async def prepare(self, current: Generation, runtime: RuntimeKeys | None) -> Prepared:
        """The generation of the file as it is now, started (its ``models: discover``
        entries asked), not yet installed; raises :class:`ConfigError` (logged) when
        the file does not load, or would stop the gateway at start."""
        try:
            return await self._prepare(current, runtime)
        except ConfigError as error:
            _log.warning("gateway.reload_failed", source=str(self.source), error=str(error))
            self._say(f"reload failed, still serving the previous config: {error}")
            raise

    async def _prepare(self, current: Generation, runtime: RuntimeKeys | None) -> Prepared:
        if self.source is None:
            raise ConfigError(
                "polyroute serve runs on the built-in default config: there is no file to "
                "re-read (start it with -c FILE)"
            )
        config = load_config(self.source)
        summary = summarize(str(self.source), self.config, config)
        config = keep_running(self.config, config)
        self._check(config)
        if not summary.changed:
            return Prepared(None, config, summary)
        gateway = config.gateway
        keys = KeyRing(gateway.keys, gateway.teams, gateway.budget_hold_s, runtime=runtime)
        router = current.router.reconfigured(config)
        made = _made_by(router, current.router)
        try:
            await router.start()  # discovery, the price catalogue: its state runs already
        except BaseException:
            await _close(made)
            raise
        return Prepared(Generation(router, gateway, keys), config, summary)

    def installed(self, prepared: Prepared) -> None:
        """``prepared`` is in service: log and say what changed."""
        self.config = prepared.config
        summary = prepared.summary
        _log.info("gateway.reloaded", **summary.as_json())
        self._say(f"reloaded {summary.source}: {summary.describe()}")
        if summary.needs_restart:
            restart = ", ".join(summary.needs_restart)
            _log.warning("gateway.reload_needs_restart", keys=summary.needs_restart)
            self._say(f"{restart} changed: kept as running until a restart")

    def _say(self, line: str) -> None:
        print(f"polyroute: {line}", file=self._out, flush=True)


class Retirements:
    """Generations replaced but still serving requests. Each is retired once its last
    request ends: the providers no live generation holds are closed then."""

    def __init__(self) -> None:
        self._retiring: list[Generation] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def retire(self, old: Generation, current: Callable[[], Generation]) -> None:
        """Close what only ``old`` holds once it is idle; ``current``: the generation
        in service then."""
        self._retiring.append(old)
        task = asyncio.get_running_loop().create_task(self._when_idle(old, current))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _when_idle(self, old: Generation, current: Callable[[], Generation]) -> None:
        await old.idle.wait()
        self._retiring.remove(old)
        live = [current(), *self._retiring]
        held = {id(provider) for generation in live for provider in generation.router.providers}
        gone = [provider for provider in old.router.providers if id(provider) not in held]
        await _close(gone)
        _log.debug("gateway.generation_retired", closed=[p.entry_name for p in gone])

    async def aclose(self) -> None:
        """Wait for the retirements under way (their requests end first: drain them)."""
        while self._tasks:
            await asyncio.gather(*self._tasks)


def _made_by(router: Router, previous: Router) -> list[Provider]:
    """The providers ``router`` made itself (those it did not take from ``previous``)."""
    kept = {id(provider) for provider in previous.providers}
    return [provider for provider in router.providers if id(provider) not in kept]


async def _close(providers: list[Provider]) -> None:
    await asyncio.gather(*(provider.aclose() for provider in providers))
