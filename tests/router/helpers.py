"""Shared helpers for router tests."""

from __future__ import annotations

from typing import Any

from polyroute import Router
from tests.upstreams.darkai import DarkAIUpstream

HI = [{"role": "user", "content": "Hi"}]


class FakeSleep:
    """Stands in for asyncio.sleep: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def entry(name: str, server: DarkAIUpstream, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "darkai", "api_endpoint": server.url, "working": True, **extra}


def router_for(*entries: dict[str, Any], sleep: FakeSleep | None = None, **settings: Any) -> Router:
    config = {"providers": list(entries), **settings}
    return Router.from_config(config, sleep=sleep or FakeSleep())


async def collect(router: Router, model: str = "gpt-4o", **params: Any) -> tuple[str, Any]:
    async with router.stream(model, HI, **params) as stream:
        text = "".join([chunk async for chunk in stream])
    return text, stream
