"""``polyroute conformance config|run``: argument parsing and output only.

Mounted under ``polyroute conformance`` by :func:`add_subcommands` (the handler to await
is :func:`execute`), or run alone by :func:`main` (``python -m polyroute.conformance``).
Exit codes: 0 no silent truncation, 1 at least one, 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from polyroute.conformance.configs import CONFIGS
from polyroute.conformance.faults import DEFAULT_MODEL_PREFIX, DEFAULT_UPSTREAMS_PORT, Ports
from polyroute.conformance.report import as_json, as_table, silent_truncations
from polyroute.conformance.suite import DEFAULT_TIMEOUT_S, Target, run_suite
from polyroute.core.errors import ConfigError

EXIT_CLEAN = 0
EXIT_SILENT_TRUNCATION = 1
EXIT_USAGE = 2


def add_subcommands(subparsers: Any) -> None:
    """Add ``config`` and ``run`` to ``subparsers`` (an ``add_subparsers()`` result);
    each sets ``conformance_action``, which :func:`execute` awaits."""
    config = subparsers.add_parser(
        "config", help="print a gateway config that points at the suite's upstreams"
    )
    _common(config)
    config.add_argument(
        "--for",
        dest="gateway",
        choices=sorted(CONFIGS),
        default="polyroute",
        help="the gateway the config is for (default polyroute)",
    )
    config.set_defaults(conformance_action=_config)

    run = subparsers.add_parser(
        "run", help="start the fault upstreams and send one request per fault through URL"
    )
    run.add_argument(
        "url",
        type=_gateway_url,
        metavar="URL",
        help="the gateway, as an OpenAI SDK takes it (http://127.0.0.1:8000/v1)",
    )
    _common(run)
    run.add_argument("--api-key", metavar="KEY", help="sent as Authorization: Bearer KEY")
    run.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"seconds a client waits for each answer (default {DEFAULT_TIMEOUT_S:g})",
    )
    run.add_argument("--json", action="store_true", help="one JSON document on stdout")
    run.set_defaults(conformance_action=_run)


async def execute(args: argparse.Namespace) -> int:
    """Run the parsed command; the exit code. Raises :class:`ConfigError` when the
    suite's ports are taken."""
    code: int = await args.conformance_action(args)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``config`` or ``run`` from ``argv``; the exit code (2 on a usage error)."""
    parser = argparse.ArgumentParser(
        prog="polyroute conformance",
        description="A fault suite for OpenAI-compatible gateways: does a client ever "
        "get a cut answer that looks complete? (docs/conformance.md)",
    )
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as leaving:  # argparse's usage errors (2), and --help (0)
        return leaving.code if isinstance(leaving.code, int) else EXIT_USAGE
    try:
        return asyncio.run(execute(args))
    except ConfigError as error:
        print(f"polyroute conformance: {error.message}", file=sys.stderr)
        return EXIT_USAGE


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--upstreams-port",
        type=_base_port,
        default=DEFAULT_UPSTREAMS_PORT,
        metavar="PORT",
        help=f"the fault upstream listens on PORT, the backup on PORT+1, nothing on PORT+2 "
        f"(default {DEFAULT_UPSTREAMS_PORT})",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_PREFIX,
        metavar="PREFIX",
        help=f"the gateway's model names are PREFIX-<fault> (default {DEFAULT_MODEL_PREFIX})",
    )


async def _config(args: argparse.Namespace) -> int:
    print(CONFIGS[args.gateway](Ports.from_base(args.upstreams_port), args.model), end="")
    return EXIT_CLEAN


async def _run(args: argparse.Namespace) -> int:
    target = Target(args.url, args.api_key, args.model, args.timeout)
    results = await run_suite(target, Ports.from_base(args.upstreams_port))
    print(as_json(args.url, results) if args.json else as_table(args.url, results))
    return EXIT_SILENT_TRUNCATION if silent_truncations(results) else EXIT_CLEAN


def _base_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65533:
        raise argparse.ArgumentTypeError(f"{port} is not between 1 and 65533 (PORT+2 is used)")
    return port


def _gateway_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http(s) URL such as http://127.0.0.1:8000/v1"
        )
    return text
