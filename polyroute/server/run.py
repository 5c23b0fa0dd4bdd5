"""Running the gateway: bind, say where, serve until SIGTERM or SIGINT, then drain."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import sys
from typing import TextIO

from aiohttp import web

from polyroute.core.errors import ConfigError
from polyroute.router.config import RouterConfig
from polyroute.router.router import Router
from polyroute.server.app import Gateway


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(
    config: RouterConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    insecure: bool = False,
    out: TextIO | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve ``config``'s router on ``host:port`` until SIGTERM or SIGINT.

    In-flight requests get ``gateway.drain_seconds`` to finish; then the rest are
    cancelled (their streams end with an error event) and the upstreams closed.
    A non-loopback ``host`` needs gateway keys (``gateway.keys``), or ``insecure``: an
    open gateway spends its owner's API keys for whoever reaches it.
    """
    if not is_loopback(host) and not insecure and not config.gateway.keys:
        raise ConfigError(
            f"refusing to serve on {host} with no gateway keys: configure gateway.keys, or "
            "pass --insecure (anyone who can reach the port could spend the upstream keys)"
        )
    out = out or sys.stderr
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Router.from_config(config) as router:
        runner = web.AppRunner(
            Gateway(router, config.gateway).app(),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=config.gateway.drain_seconds,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            bound = runner.addresses[0]
            print(f"polyroute: serving on http://{bound[0]}:{bound[1]}", file=out, flush=True)
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()
