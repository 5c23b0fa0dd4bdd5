"""The ``polyroute`` command: argument parsing and terminal output only.

Exit codes: 0 success; 1 every provider failed, or the answer broke off (for the
admin commands: the gateway unreachable, or refusing the change); 2 bad usage or
configuration (an admin call's bad value, or a missing or wrong admin key); 3
unknown model; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TextIO, cast

from polyroute import __version__, admin_cli, logs_cli
from polyroute.admin_client import AdminApiError
from polyroute.conformance import cli as conformance_cli
from polyroute.core.attempts import Attempt
from polyroute.core.config_file import read_config_of_kind
from polyroute.core.errors import (
    AllProvidersFailed,
    ConfigError,
    InvalidRequestError,
    ModelNotSupportedError,
    PolyrouteError,
    UpstreamError,
    cause_of,
)
from polyroute.core.logging import configure_logging
from polyroute.core.request import RequestOptions
from polyroute.router.config import RouterConfig, load_config, validate
from polyroute.router.router import EntryStatus, Router
from polyroute.router.stream import RouterStream
from polyroute.simulator.profile import Latency, SimulatedUpstream, SimulatorConfig
from polyroute.simulator.server import SimulatorServer
from polyroute.terminal import AnswerLine, EventStream, table

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
LOCAL_CONFIG = "polyroute.yaml"
BUILTIN_LABEL = "built-in default (three simulated upstreams on 127.0.0.1; offline)"
# chat's answer on stdout, and the -v events on stderr, which end its open line first.
_ANSWER = AnswerLine()
_EVENTS = EventStream(_ANSWER)


def find_config(option: str | None) -> tuple[RouterConfig, str]:
    """The config to use and how it was found: ``-c``, ``POLYROUTE_CONFIG``,
    ``./polyroute.yaml``, then the built-in default."""
    path, origin = config_file(option)
    if path is None:
        builtin = resources.files("polyroute").joinpath("default_config.yaml")
        with resources.as_file(builtin) as builtin_path:
            return load_config(builtin_path), BUILTIN_LABEL
    try:
        return load_config(path), f"{path} (from {origin})"
    except ConfigError as error:
        if origin != "POLYROUTE_CONFIG":
            raise
        # Set long ago, perhaps in a shell profile: say where the file's name came from.
        raise ConfigError(f"POLYROUTE_CONFIG={path}: {error}") from None


def config_file(option: str | None) -> tuple[Path | None, str]:
    """The config file to use and how it was found (``-c``, ``POLYROUTE_CONFIG``,
    ``./polyroute.yaml``); ``None`` for the built-in default."""
    searched: list[tuple[str | None, str]] = [
        (option, "-c"),
        (os.environ.get("POLYROUTE_CONFIG"), "POLYROUTE_CONFIG"),
        (LOCAL_CONFIG if Path(LOCAL_CONFIG).is_file() else None, "./polyroute.yaml"),
    ]
    for path, origin in searched:
        if path:
            return Path(path), origin
    return None, BUILTIN_LABEL


COMMON_DEFAULTS: dict[str, Any] = {
    "config": None,
    "verbose": 0,
    "log_format": "auto",
    "debug": False,
}
"""The options every command takes, before or after its name, and their defaults."""


CONFIG_HELP = (
    "config file (.yaml, .toml or .json) (default: $POLYROUTE_CONFIG, else ./polyroute.yaml, "
    "else the built-in simulated upstreams)"
)


def common_options(config_help: str = CONFIG_HELP) -> argparse.ArgumentParser:
    # SUPPRESS, so that an option given before the command is not reset by the
    # subcommand's parser when it is not repeated after it; defaults come afterwards.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("-c", "--config", help=config_help)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        help="routing events on stderr (-vv: debug events too) (default: none)",
    )
    common.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        help="events as text for humans or JSON lines (default: auto, text on a terminal)",
    )
    common.add_argument(
        "--debug", action="store_true", help="show tracebacks on errors (default: off)"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="polyroute",
        description="Route streaming LLM chat requests across providers.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"polyroute {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, parents=[common])

    chat = command("chat", "stream an answer to stdout")
    chat.add_argument("-m", "--model", help="model or alias (default: the config's default_model)")
    chat.add_argument("--system", help="a system message to send first")
    chat.add_argument(
        "-o",
        "--option",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a request option (-o temperature 0.2); VALUE is JSON when it parses as JSON; "
        "keys the router does not know go to the provider as extra_body",
    )
    chat.add_argument("--max-tokens", type=int, help="the same as -o max_tokens N")
    chat.add_argument("--no-stream", action="store_true", help="print the answer once complete")
    chat.add_argument(
        "--json",
        action="store_true",
        help="one JSON object, on failure too: status, answer, provider, model, each "
        "attempt, usage, finish reason, error",
    )
    chat.add_argument("prompt", nargs="*", help="the prompt (read from stdin when absent)")

    command("models", "which providers serve which models")

    providers = command("providers", "the configured provider entries")
    providers.add_argument("--check", action="store_true", help="send one tiny request to each")

    serve_command = command("serve", "an OpenAI-compatible gateway (POST /v1/chat/completions)")
    serve_command.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, loopback)"
    )
    serve_command.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default: %(default)s)"
    )
    serve_command.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback host without gateway keys (default: off)",
    )
    serve_command.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes on the one port, SO_REUSEPORT (default: %(default)s)",
    )
    serve_command.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)

    admin_cli.add_commands(command, common)
    logs_cli.add_command(command, common, config_file)

    conformance = command("conformance", "a fault suite for any OpenAI-compatible gateway")
    conformance_cli.add_subcommands(conformance.add_subparsers(dest="action", required=True))

    # simulate's -c is a simulator config (upstreams: [...]); default: the docs' examples'.
    simulator_file = "a simulator config, upstreams: [...] (default: the docs' two examples)"
    simulate_command = commands.add_parser(
        "simulate",
        help="run simulated upstreams on 127.0.0.1",
        parents=[common_options(simulator_file)],
    )
    simulate_command.add_argument(
        "--port",
        type=int,
        default=None,
        help="the first upstream listens on PORT, the next on PORT+1... "
        "(default: the file's ports; without -c, 8081 and 8082)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    for name, default in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.verbose:
        level = logging.DEBUG if args.verbose > 1 else logging.INFO
        configure_logging(
            level=level,
            fmt=args.log_format,
            stream=cast(TextIO, _EVENTS),
            request_ids=args.command == "serve",  # requests served at once interleave
        )
    handler = {
        "chat": chat,
        "models": models,
        "providers": providers,
        "serve": serve,
        "simulate": simulate,
        "keys": admin_cli.keys,
        "teams": admin_cli.teams,
        "spend": admin_cli.spend,
        "logs": logs_cli.logs,
        "conformance": conformance_cli.execute,
    }
    try:
        return asyncio.run(handler[args.command](args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except PolyrouteError as error:
        if args.debug:  # the traceback as well, and nothing else changes
            traceback.print_exc(file=sys.stderr)
        print(f"polyroute: {one_line(error, bool(args.verbose))}", file=sys.stderr)
        if isinstance(error, ModelNotSupportedError) or _no_upstream_knows_the_model(error):
            return EXIT_MODEL
        if isinstance(error, ConfigError | InvalidRequestError):
            return EXIT_USAGE
        if isinstance(error, AdminApiError) and error.is_usage:
            return EXIT_USAGE
        return EXIT_FAILED


def _no_upstream_knows_the_model(error: PolyrouteError) -> bool:
    """Every entry tried answered that it has no such model."""
    return (
        isinstance(error, AllProvidersFailed)
        and bool(error.attempts)
        and all(isinstance(a.error, ModelNotSupportedError) for a in error.attempts)
    )


def one_line(error: PolyrouteError, verbose: bool = False) -> str:
    """A single line for the terminal. Every entry's failure once, grouped; under -v
    the ``route.failed`` event just above has already said it, so it is not repeated."""
    if isinstance(error, AllProvidersFailed):
        head = f"all providers failed for model {error.model!r}"
        if verbose:
            return f"{head} (each attempt above)"
        why = "; ".join([*error.by_entry(), *error.reasons]) or "no provider was tried"
        return f"{head}: {why}; -v shows each attempt"
    if isinstance(error, ConfigError):
        return str(error)  # may show a line of the file and a caret under the spot
    return " ".join(str(error).split())


async def chat(args: argparse.Namespace) -> int:
    stream: RouterStream | None = None
    try:
        config, origin = find_config(args.config)
        print(f"polyroute: config: {origin}", file=sys.stderr)
        messages = chat_messages(args.prompt, args.system)
        options = request_options(args.option, args.max_tokens)
        async with Router.from_config(config) as router:
            stream = router.stream(args.model, messages, **options)
            await relay(stream, live=not (args.json or args.no_stream))
    except PolyrouteError as error:
        if args.json:  # a script reads stdout: it gets its object on failure too
            print(json.dumps(failure_facts(error, stream)))
        raise
    if args.json:
        print(json.dumps(answer_facts(stream)))
        return EXIT_OK
    if args.no_stream:
        _ANSWER.write(stream.text)
    _ANSWER.finish()
    return EXIT_OK


def chat_messages(words: list[str], system: str | None) -> list[dict[str, str]]:
    """The conversation: ``system`` first when given, then the prompt (the words, or
    stdin when there are none)."""
    prompt = " ".join(words).strip()
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
    if not prompt:
        raise InvalidRequestError("no prompt: give one as an argument or on stdin")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return messages


async def relay(stream: RouterStream, *, live: bool) -> None:
    """Read ``stream`` to its end, writing the text as it comes when ``live``."""
    try:
        async with stream:
            async for text in stream:
                if live:
                    _ANSWER.write(text)
    except UpstreamError:
        _ANSWER.end()  # the error message goes on a line of its own
        raise


def request_options(pairs: list[list[str]], max_tokens: int | None) -> dict[str, Any]:
    """``-o KEY VALUE`` pairs as request options: values parsed as JSON where they
    parse, keys the router does not take gathered into ``extra_body``."""
    options: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, raw in pairs:
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        (options if key in RequestOptions.model_fields else extra)[key] = value
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if extra:
        options["extra_body"] = {**options.get("extra_body", {}), **extra}
    return options


def answer_facts(stream: RouterStream) -> dict[str, Any]:
    """What ``chat --json`` prints for an answer."""
    message = stream.message
    return {
        "status": stream.status,
        "answer": message.content,
        "tool_calls": [call.as_dict() for call in message.tool_calls],
        "provider": stream.provider,
        "model": stream.model,
        "attempts": [attempt_facts(attempt) for attempt in stream.attempts],
        "usage": stream.usage.as_dict() if stream.usage else None,
        "finish_reason": stream.finish_reason,
        "error": None,
    }


def failure_facts(error: PolyrouteError, stream: RouterStream | None) -> dict[str, Any]:
    """What ``chat --json`` prints without a whole answer: :func:`answer_facts`' keys,
    ``status`` ``failed`` (``truncated`` when part of the answer had been delivered)
    and the error; the attempts are the stream's, or those the error lists."""
    facts = answer_facts(stream) if stream is not None else {}
    attempts = stream.attempts if stream is not None else []
    if not attempts and isinstance(error, AllProvidersFailed):
        attempts = error.attempts
    return {
        "status": "truncated" if facts.get("status") == "truncated" else "failed",
        "answer": facts.get("answer"),
        "tool_calls": facts.get("tool_calls", []),
        "provider": facts.get("provider"),
        "model": facts.get("model"),
        "attempts": [attempt_facts(attempt) for attempt in attempts],
        "usage": facts.get("usage"),
        "finish_reason": facts.get("finish_reason"),
        "error": error_facts(error),
    }


def attempt_facts(attempt: Attempt) -> dict[str, Any]:
    """One attempt for ``chat --json``: entry, model, outcome, times, what went wrong."""
    return {
        "provider": attempt.provider,
        "model": attempt.model,
        "outcome": attempt.outcome,
        "ttft_ms": attempt.ttft_ms,
        "duration_ms": attempt.duration_ms,
        "chars": attempt.chars,
        "finish_reason": attempt.finish_reason,
        "error": error_facts(attempt.error) if attempt.error is not None else None,
    }


def error_facts(error: BaseException) -> dict[str, str]:
    return {"type": type(error).__name__, "message": str(error)}


async def models(args: argparse.Namespace) -> int:
    config, origin = find_config(args.config)
    router = Router.from_config(config)
    async with router:
        entries = {entry.name: entry for entry in router.entry_status()}
        aliases, fallbacks = router.settings.aliases, router.settings.fallbacks
        rows: list[tuple[str, ...]] = []
        for model in router.known_models():
            served = [label(entries[name]) for name in router.serving(model)]
            if served and model not in aliases:
                rows.append((model, ", ".join(served)))
        anything = [label(entry) for entry in entries.values() if not entry.models]
        if anything:
            rows.append(("(any other name)", ", ".join(anything)))
        print(f"# config: {origin}")
        table(["MODEL", "PROVIDERS (in priority order)"], rows)
        if aliases:
            print()
            table(["ALIAS", "TARGET"], sorted(aliases.items()))
        if fallbacks:
            print()
            table(
                ["MODEL", "FALLBACK CHAIN"],
                [(m, " -> ".join(chain)) for m, chain in sorted(fallbacks.items())],
            )
        failed = [(e.name, f"discovery failed: {e.discovery_error}") for e in entries.values()
                  if e.discovery_error]  # fmt: skip
        if failed:  # such entries take any model name meanwhile
            print()
            table(["ENTRY", "MODEL LIST"], failed)
    return EXIT_OK


async def providers(args: argparse.Namespace) -> int:
    config, origin = find_config(args.config)
    async with Router.from_config(config) as router:
        checks: dict[str, str] = {}
        if args.check:
            entries = router.entry_status()
            results = await asyncio.gather(*(check(router, entry) for entry in entries))
            checks = {entry.name: result for entry, result in zip(entries, results, strict=True)}
        # Read after the checks: their failures may have opened a circuit.
        rows = [entry_row(entry, checks.get(entry.name)) for entry in router.entry_status()]
    print(f"# config: {origin}")
    header = ["NAME", "TYPE", "STREAM", "STATE", "TTFT", "CHARS", "ERRORS", "ENDPOINT"]
    table(header + (["CHECK"] if checks else []), rows)
    # Usable in CI: any failed check fails the command (a skipped entry does not).
    return EXIT_FAILED if any(c.startswith("failed") for c in checks.values()) else EXIT_OK


def entry_row(entry: EntryStatus, checked: str | None) -> tuple[str, ...]:
    """One row of ``providers``: the entry, its state, its figures (and its check)."""
    stats = entry.stats
    return (
        entry.name,
        entry.type,
        yes(entry.supports_stream),
        entry_state(entry, checked),
        figure(stats.ttft_ms, "ms"),
        figure(stats.chars_per_s, "/s"),
        f"{stats.error_rate:.0%}" if stats.attempts else "-",
        entry.endpoint or "-",
        *([checked] if checked is not None else []),
    )


def entry_state(entry: EntryStatus, checked: str | None) -> str:
    """What an entry can do now, in one phrase: why it cannot serve (``no key: VAR``,
    ``not working``, ``cooling down (12 s left)``), ``discovery failed`` (it takes any
    model name meanwhile), ``failing`` when its check just failed, else its circuit
    (``healthy``, ``on trial``)."""
    if entry.missing_key:
        return f"no key: {entry.missing_key}"
    if entry.unusable:
        return entry.unusable
    if entry.discovery_error is not None:
        return "discovery failed"
    if checked is not None and checked.startswith("failed"):
        return "failing"
    return entry.health


async def check(router: Router, entry: EntryStatus) -> str:
    """``providers --check`` for one entry: a tiny request through the router's attempt
    engine, so its figures and health count like a routed request's."""
    if entry.missing_key:
        return f"skipped (no key: {entry.missing_key})"
    if not entry.working:
        return "skipped (not working)"
    if entry.discovery_error is not None:
        return f"failed: model discovery: {entry.discovery_error}"
    result = await router.check_entry(entry.name)
    if result.error is not None:
        return f"failed: {cause_of(result.error)[:160]}"
    first, total = result.first_chunk_ms or result.total_ms or 0.0, result.total_ms or 0.0
    return f"ok {result.model}: first chunk {first:.0f} ms, total {total:.0f} ms"


def label(entry: EntryStatus) -> str:
    """An entry's name, and why it cannot serve when that is for lack of a key."""
    return f"{entry.name} (no key: {entry.missing_key})" if entry.missing_key else entry.name


def figure(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.0f}{unit}"


async def serve(args: argparse.Namespace) -> int:
    from polyroute.server import run  # the top floor, loaded on demand

    config, origin = find_config(args.config)
    print(f"polyroute: config: {origin}", file=sys.stderr)
    if args.workers < 1:
        raise InvalidRequestError("--workers must be at least 1")
    try:
        if args.workers > 1:
            argv = [a for a in sys.argv[1:] if not a.startswith("--workers=")]
            argv = _without_value(argv, "--workers")
            if args.verbose and args.log_format == "auto" and sys.stderr.isatty():
                # A worker's stderr is a pipe to this process: it would choose JSON.
                argv += ["--log-format", "console"]
            return await run.serve_workers(argv, args.workers, args.port, host=args.host)
        await run.serve(
            config,
            host=args.host,
            port=args.port,
            insecure=args.insecure,
            reuse_port=args.reuse_port,
            source=config_file(args.config)[0],  # what SIGHUP re-reads
        )
        return EXIT_OK
    finally:
        ignore_stop_signals()


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def ignore_stop_signals() -> None:
    """The gateway (or the simulator) has stopped and the process is on its way out. A
    repeated SIGTERM or SIGINT (a supervisor, or a test, that asks again), or a late
    SIGHUP, would otherwise land after asyncio gives the signals their default action
    back, and kill the process: exit -15, not 0. They are blocked while their handlers
    go: asyncio gives each its default action before it can be ignored, and one landing
    in between killed the process (seen in CI); one pending when it is ignored is
    discarded."""
    loop = asyncio.get_running_loop()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _without_value(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and the value after it."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        else:
            kept.append(arg)
    return kept


async def simulate(args: argparse.Namespace) -> int:
    profiles = simulator_profiles(args.config)
    if args.port is not None:
        if not 0 < args.port <= 65536 - len(profiles):
            raise ConfigError(f"--port {args.port}: no room for {len(profiles)} ports from there")
        profiles = [
            profile.model_copy(update={"port": args.port + offset})
            for offset, profile in enumerate(profiles)
        ]
    servers = [SimulatorServer(profile) for profile in profiles]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        for server in servers:
            await server.start()
        for server in servers:  # once all listen: a port taken stops them all, unannounced
            profile = server.profile
            print(f"{profile.name}\t{profile.format}\t{server.config_url}", flush=True)
        print(
            f"polyroute: simulating {len(servers)} upstreams (in a config, the URL is an openai "
            "or anthropic entry's base_url, a darkai entry's api_endpoint); Ctrl-C stops",
            file=sys.stderr,
        )
        await stop.wait()
    finally:
        for server in servers:
            await server.stop()
        ignore_stop_signals()
    return EXIT_OK


def simulator_profiles(path: str | None) -> list[SimulatedUpstream]:
    if not path:
        return list(EXAMPLE_UPSTREAMS)
    data = read_config_of_kind(Path(path), "simulator")
    return validate(SimulatorConfig, data, path).upstreams


# What `polyroute simulate` serves with no file: the DarkAI-format servers that the
# examples in README.md and docs/ talk to, steady and quick.
_QUICK = Latency(first_chunk_ms=50, chunk_gap_ms=10)
EXAMPLE_UPSTREAMS = (
    SimulatedUpstream(name="dark", format="darkai", port=8081, latency=_QUICK),
    SimulatedUpstream(name="backup", format="darkai", port=8082, seed=1, latency=_QUICK),
)


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def run() -> None:
    """Console-script entry point."""
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
