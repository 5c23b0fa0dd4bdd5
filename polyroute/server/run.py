"""Running the gateway: bind, say where, serve until SIGTERM or SIGINT, then drain;
reload the config file at SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web, web_response

from polyroute.core.errors import ConfigError, describe_error, refusals_to_listen
from polyroute.core.logging import get_logger
from polyroute.router.config import RouterConfig
from polyroute.router.router import Router
from polyroute.server.app import Gateway
from polyroute.server.connections import listen
from polyroute.server.floods import quiet_floods
from polyroute.server.listener import Listener
from polyroute.server.memory import tune_allocator
from polyroute.server.reload import ConfigReloader
from polyroute.store import build_store
from polyroute.telemetry.config import TelemetryConfig, telemetry_in_service
from polyroute.telemetry.observer import Tracing

_log = get_logger()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_exposure(config: RouterConfig, host: str, insecure: bool) -> None:
    """Raise :class:`ConfigError` for a non-loopback ``host`` without gateway keys (or a
    store's), unless ``insecure``: an open gateway spends its owner's API keys for
    whoever reaches it."""
    if not is_loopback(host) and not insecure and not config.gateway.keys and not config.store:
        raise ConfigError(
            f"refusing to serve on {host} with no gateway keys: configure gateway.keys or a "
            "store: (keys made at runtime), or pass --insecure (anyone who can reach the "
            "port could spend the upstream keys)"
        )


async def serve(
    config: RouterConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    insecure: bool = False,
    out: TextIO | None = None,
    ready: asyncio.Event | None = None,
    reuse_port: bool = False,
    source: Path | None = None,
) -> None:
    """Serve ``config``'s router on ``host:port`` until SIGTERM or SIGINT.

    In-flight requests get ``gateway.drain_seconds`` to finish; then the rest are
    cancelled (their streams end with an error event), the spend ledger flushed and the
    store and upstreams closed. SIGHUP re-reads ``source``, the file ``config`` came
    from (``None``: none; the reload says so), as ``POST /admin/reload`` does
    (docs/gateway.md#reload).
    A non-loopback ``host`` needs gateway keys (``gateway.keys``), or ``insecure``: an
    open gateway spends its owner's API keys for whoever reaches it.
    Its signal handlers stay when it returns: a stop signal sent again must not find
    the default action (cli.ignore_stop_signals ends them).
    """
    refuse_exposure(config, host, insecure)
    out = out or sys.stderr
    stop, hangup = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # Taken from the start (its default action ends the process); a SIGHUP that comes
    # before the gateway serves is acted on once it does.
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    store = build_store(config.store) if config.store is not None else None
    reloader = ConfigReloader(
        config, source, check=lambda new: refuse_exposure(new, host, insecure), out=out
    )
    tracing = gateway_tracing(config.telemetry, os.environ)
    router = Router.from_config(config)
    await router.start()
    gateway = None
    try:
        gateway = Gateway(
            router, config.gateway, store, reloader=reloader, logs=config.logs, tracing=tracing
        )
        await _serve_until_stopped(gateway, host, port, reuse_port, out, ready, stop, hangup)
    finally:
        # The router in service last: its routing state is every configuration's.
        await (gateway.router if gateway is not None else router).aclose()


def gateway_tracing(config: TelemetryConfig | None, environ: Mapping[str, str]) -> Tracing | None:
    """The gateway's tracing: as ``telemetry:`` says, else as the standard variables
    say when one names an OTLP endpoint, else none (nothing is exported). Raises
    :class:`ConfigError` when ``telemetry:`` is set and the ``otel`` extra is missing;
    with only the variables set, that is a warning (``telemetry.unavailable``)."""
    telemetry = telemetry_in_service(config, environ)
    if telemetry is None:
        return None
    try:
        return Tracing(telemetry, server=True)
    except ConfigError as error:
        if config is not None:
            raise
        _log.warning("telemetry.unavailable", **describe_error(error))
        return None


async def _serve_until_stopped(
    gateway: Gateway,
    host: str,
    port: int,
    reuse_port: bool,
    out: TextIO,
    ready: asyncio.Event | None,
    stop: asyncio.Event,
    hangup: asyncio.Event,
) -> None:
    # The application names itself on every answer it makes (app.py); this covers those
    # aiohttp makes before a request reaches it (a malformed request line or header),
    # which would otherwise tell the versions of Python and aiohttp.
    vars(web_response)["SERVER_SOFTWARE"] = "polyroute"  # the name aiohttp reads at each answer
    # The connections' settings, for the runner's server and for each connection
    # (connections.listen makes them; docs/gateway.md#limits-and-overload).
    handler_args: dict[str, Any] = {
        "access_log": None,
        "keepalive_timeout": gateway.config.keepalive_s,
    }
    runner = web.AppRunner(gateway.app(), handler_cancellation=True, **handler_args)
    await runner.setup()
    following = None
    listener: Listener | None = None
    loud_again = quiet_floods()
    try:
        await gateway.start()
        tune_allocator()
        for warning in gateway.limits.warnings:
            print(f"polyroute: {warning}", file=out, flush=True)
        assert runner.server is not None
        with refusals_to_listen(host, port):
            listener = listen(
                runner.server,
                gateway.connections,
                host,
                port,
                reuse_port=reuse_port,
                handler_args=handler_args,
            )
        bound = listener.address
        # Everything made so far (modules, schemas, the router) lives as long as the
        # process: out of the collector's generations, it is never traversed again.
        # Measured in the gateway benchmark: 10% more streams/s, 10% less CPU per
        # stream, p99 to the first chunk down by up to half under paced load.
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION, *gc.get_threshold()[1:])
        print(f"polyroute: serving on http://{bound[0]}:{bound[1]}", file=out, flush=True)
        if ready is not None:
            ready.set()
        following = asyncio.get_running_loop().create_task(_follow_hangups(gateway, hangup))
        await stop.wait()
        following.cancel()
        listener.close()  # no new connections; those in flight go on
        await gateway.drain(gateway.config.drain_seconds)
    finally:
        if following is not None:
            following.cancel()  # a reload under way is dropped: nothing of it is in service
            with contextlib.suppress(asyncio.CancelledError):
                await following  # raises what broke it, if anything did
        if listener is not None:
            listener.close()
        await runner.cleanup()
        await gateway.aclose()  # after the requests: their spend rows are queued
        loud_again()


async def _follow_hangups(gateway: Gateway, hangup: asyncio.Event) -> None:
    """Reload the config at each SIGHUP; several during a reload make one more."""
    while True:
        await hangup.wait()
        hangup.clear()
        with contextlib.suppress(ConfigError):  # logged and said: the running one stays
            await gateway.reload()


async def serve_workers(
    argv: list[str],
    workers: int,
    port: int,
    out: TextIO | None = None,
    *,
    host: str = "127.0.0.1",
) -> int:
    """Run ``workers`` gateway processes on one port (SO_REUSEPORT: the kernel spreads
    connections across them), each started with ``argv`` plus ``--reuse-port``.

    Says where it listens once every worker does; SIGTERM or SIGINT is passed on to
    each, which drains as one gateway does, and SIGHUP too, which reloads each one's
    config (a worker not yet listening gets it once it listens: before, it would end
    it). Returns the exit code (0 when all exit 0).
    Raises :class:`PortInUseError`, before any worker starts, when another process
    listens on ``host:port``: with SO_REUSEPORT the workers could otherwise share it
    with another gateway of the same user. A worker that exits before listening stops
    the others; what each said is passed on once, and its exit code is returned once
    they all have exited.
    Workers share circuits, limits and statistics only through ``state: redis``
    (docs/shared-state.md); with ``state: memory`` each keeps its own.
    Its signal handlers stay when it returns, as :func:`serve`'s do.
    """
    if not port:
        raise ConfigError("--workers needs a fixed --port: each worker binds the same one")
    out = out or sys.stderr
    await _check_free(host, port)
    return await _run_workers(argv, workers, out)


async def _check_free(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` when ``host:port`` cannot be bound (bound without
    SO_REUSEPORT, as another gateway's workers would not have it, and not listened on)."""
    loop = asyncio.get_running_loop()
    with refusals_to_listen(host, port):
        probe = await loop.create_server(asyncio.Protocol, host, port, start_serving=False)
    probe.close()
    await probe.wait_closed()


async def _run_workers(argv: list[str], workers: int, out: TextIO) -> int:
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "polyroute",
            *argv,
            "--workers",
            "1",
            "--reuse-port",
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(workers)
    ]
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _forward, children, signum)
    listening = [asyncio.Event() for _ in children]
    hangups = [asyncio.Event() for _ in children]
    loop.add_signal_handler(signal.SIGHUP, _set_all, hangups)
    urls: list[str] = []
    said: set[str] = set()  # before they listen, workers fail alike: each line once
    relays = [
        asyncio.create_task(_relay(child, event, out, urls, said))
        for child, event in zip(children, listening, strict=True)
    ]
    passing = [
        asyncio.create_task(_pass_hangups(child, event, hangup))
        for child, event, hangup in zip(children, listening, hangups, strict=True)
    ]
    ready = asyncio.gather(*(event.wait() for event in listening))
    ended = [asyncio.create_task(child.wait()) for child in children]
    first: list[asyncio.Future[Any]] = [ready, *ended]
    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    early: int | None = None
    if ready.done():
        pids = ", ".join(str(child.pid) for child in children)
        print(
            f"polyroute: serving on {urls[0]} with {len(children)} workers ({pids})",
            file=out,
            flush=True,
        )
    else:
        ready.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ready
        early = next(task.result() for task in ended if task.done())
        _forward(children, signal.SIGTERM)
    codes = await asyncio.gather(*ended)
    for task in passing:
        task.cancel()
    await asyncio.gather(*relays, *passing, return_exceptions=True)
    if early is not None:
        return early if early > 0 else 1  # a worker that ended before serving failed
    return 0 if all(code == 0 for code in codes) else 1


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


async def _pass_hangups(
    child: asyncio.subprocess.Process, listening: asyncio.Event, hangup: asyncio.Event
) -> None:
    """Send ``child`` a SIGHUP for each ``hangup`` (several at once make one) once it
    listens (its handler is in place by then), until cancelled."""
    await listening.wait()
    while True:
        await hangup.wait()
        hangup.clear()
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
                child.send_signal(signal.SIGHUP)


def _forward(children: list[asyncio.subprocess.Process], signum: int) -> None:
    for child in children:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
                child.send_signal(signum)


async def _relay(
    child: asyncio.subprocess.Process,
    listening: asyncio.Event,
    out: TextIO,
    urls: list[str],
    said: set[str],
) -> None:
    """Pass a worker's stderr on (its events, its errors), noting when it listens and
    where; a line another worker already said before listening is not repeated."""
    assert child.stderr is not None
    async for line in child.stderr:
        text = line.decode(errors="replace").rstrip("\n")
        if text.startswith(_LISTENING):
            urls.append(text.removeprefix(_LISTENING))
            listening.set()
        elif text.startswith("polyroute: config:"):
            continue
        elif listening.is_set():
            print(text, file=out, flush=True)
        elif text not in said:
            said.add(text)
            print(text, file=out, flush=True)


YOUNG_OBJECTS_PER_COLLECTION = 10_000
"""The collector's first threshold in a gateway (Python's default: 700). A request's
objects die young, but the streams in flight keep thousands alive at any moment: at 700
the collector ran every 4 streams at c=50 and moved the live streams' objects to older
generations, where they were traversed again. Timed with ``gc.callbacks`` (c=50, 64
chunks an answer): 96 us of collection a stream at 700, 40 at 10,000, with keys, budgets
and cost on 117 and 32; 100,000 saved no more and paused 6 ms a collection."""

_LISTENING = "polyroute: serving on "
