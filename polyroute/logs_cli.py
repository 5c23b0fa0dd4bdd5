"""``polyroute logs``: the request log from the terminal (argument parsing and output
only; docs/observability.md).

It reads the store a config names (``-c FILE``, else ``POLYROUTE_CONFIG``, else
``./polyroute.yaml``: the file ``polyroute serve`` runs on), or a running gateway's
admin API with ``--url`` (the admin key in ``POLYROUTE_ADMIN_KEY``): the same records
in the same JSON shape either way. ``polyroute logs show ID`` prints one request with
the timeline of its attempts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from polyroute.admin_cli import ADMIN_KEY_ENV, admin_client
from polyroute.admin_client import AdminClient
from polyroute.core.errors import ConfigError
from polyroute.router.config import load_config
from polyroute.store import RequestPage, RequestQuery, Store, build_store
from polyroute.store.request_log import MAX_PAGE, REQUEST_STATUSES, rfc3339

FOLLOW_EVERY_S = 1.0
"""How often ``--follow`` asks for new records (the gateway writes them every second)."""
LATE_S = 30.0
"""How far back ``--follow`` reads again: a record reaches the store up to a batch
interval after its request ended (later still from another gateway, or after an
outage), with a ``time`` older than records already shown. One later than this is
not shown by ``--follow`` (the log has it: ``polyroute logs`` lists it)."""
_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
FindConfig = Callable[[str | None], tuple[Path | None, str]]


def add_command(
    command: Callable[[str, str], argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    find_config: FindConfig,
) -> None:
    """Add ``logs`` (and ``logs show``) with ``command(name, help)``, cli.py's;
    ``find_config``: which config file ``-c`` (or its absence) means."""
    logs = command("logs", "the request log, newest first (docs/observability.md)")
    logs.set_defaults(find_config=find_config, action="list")
    _source_options(logs)
    logs.add_argument("--key", help="a gateway key's name (default: any)")
    logs.add_argument("--model", help="a model, as requested or as resolved (default: any)")
    logs.add_argument("--provider", help="the entry that served (default: any)")
    logs.add_argument("--status", choices=REQUEST_STATUSES, help="(default: any)")
    logs.add_argument(
        "--since", type=since, help="10m, 2h, 7d, an RFC 3339 time or a date (default: any)"
    )
    logs.add_argument(
        "--limit",
        type=_limit,
        default=20,
        help=f"records to show, at most {MAX_PAGE} (default: 20)",
    )
    logs.add_argument(
        "--follow",
        action="store_true",
        help=f"then new records as they are written, asked every {FOLLOW_EVERY_S:g} s "
        "(default: off)",
    )
    actions = logs.add_subparsers(dest="action", metavar="{show}")
    show = actions.add_parser("show", help="one request and its attempts", parents=[common])
    show.add_argument("id", help="the request's id (its x-request-id)")
    _source_options(show)


def _source_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given before `show` or after it, an option is kept (a subcommand's
    # default would otherwise overwrite what the parent parsed).
    parser.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"a running gateway's admin API (the admin key in {ADMIN_KEY_ENV}) "
        "(default: none, the store of -c's config)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="records as JSON lines (default: off)",
    )


async def logs(args: argparse.Namespace) -> int:
    """``polyroute logs`` and ``polyroute logs show``."""
    as_json = getattr(args, "json", False)
    async with _source(args) as source:
        if args.action == "show":
            record = await source.get(args.id)
            print(_json(record) if as_json else describe(record))
            return 0
        query = RequestQuery(
            key=args.key,
            model=args.model,
            provider=args.provider,
            status=args.status,
            since=args.since,
            limit=args.limit,
        )
        records = (await source.page(query)).data
        if not args.follow:
            for record in records:
                print(_json(record) if as_json else line(record))
            return 0
        await _follow(source, query, records, as_json)
    return 0


async def _follow(
    source: Source, query: RequestQuery, first: list[dict[str, Any]], as_json: bool
) -> None:
    """Print ``first`` oldest first (as ``tail -f`` does), then each record written later,
    until SIGINT (raised as ``KeyboardInterrupt``: the CLI's exit code 130)."""
    # Handled here rather than left to Python's default: a process started with SIGINT
    # ignored (a script's background job, some CI runners) would never stop otherwise,
    # and `serve` and `simulate` stop on it all the same. As asyncio.run's own handler
    # does, it cancels the task, so that a read under way stops too.
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    interrupted = asyncio.Event()

    def interrupt() -> None:
        interrupted.set()
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, interrupt)
    try:
        shown: dict[tuple[str, str], datetime] = {}
        records = first
        while True:
            fresh = [r for r in reversed(records) if (r["time"], r["id"]) not in shown]
            for record in sorted(fresh, key=lambda r: (r["time"], r["id"])):
                print(_json(record) if as_json else line(record), flush=True)
                shown[record["time"], record["id"]] = datetime.fromisoformat(record["time"])
            newest = max(shown.values(), default=None)
            if newest is not None:
                horizon = newest - timedelta(seconds=LATE_S)
                shown = {key: moment for key, moment in shown.items() if moment >= horizon}
            await asyncio.sleep(FOLLOW_EVERY_S)  # a poll: nothing to wait on in a remote store
            records = await _read_since(source, query, newest)
    except asyncio.CancelledError:
        if not interrupted.is_set():
            raise
        raise KeyboardInterrupt from None
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _read_since(
    source: Source, query: RequestQuery, newest: datetime | None
) -> list[dict[str, Any]]:
    """Every record matching ``query`` from ``LATE_S`` before ``newest`` on (page by page)."""
    since = query.since
    if newest is not None:
        late = newest - timedelta(seconds=LATE_S)
        since = late if since is None else max(since, late)
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await source.page(
            RequestQuery(
                key=query.key,
                model=query.model,
                provider=query.provider,
                status=query.status,
                since=since,
                limit=MAX_PAGE,
                cursor=cursor,
            )
        )
        records += page.data
        if (cursor := page.next_cursor) is None:
            return records


# Where the records come from -------------------------------------------------------


class Source(Protocol):
    async def page(self, query: RequestQuery) -> RequestPage: ...

    async def get(self, request_id: str) -> dict[str, Any]: ...

    async def __aenter__(self) -> Source: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class _StoreSource:
    """The store itself: a SQLite file or PostgreSQL."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def page(self, query: RequestQuery) -> RequestPage:
        return await self.store.list_requests(query)

    async def get(self, request_id: str) -> dict[str, Any]:
        return await self.store.get_request(request_id)

    async def __aenter__(self) -> _StoreSource:
        await self.store.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.store.aclose()


class _ApiSource:
    """A running gateway's ``/admin/requests``."""

    def __init__(self, client: AdminClient) -> None:
        self.client = client

    async def page(self, query: RequestQuery) -> RequestPage:
        given = {
            "key": query.key,
            "model": query.model,
            "provider": query.provider,
            "status": query.status,
            "since": rfc3339(query.since) if query.since is not None else None,
            "limit": str(query.limit),
            "cursor": query.cursor,
        }
        params = {name: value for name, value in given.items() if value is not None}
        answer = await self.client.call("GET", "/admin/requests", query=params)
        return RequestPage(answer["data"], answer.get("next_cursor"))

    async def get(self, request_id: str) -> dict[str, Any]:
        record: dict[str, Any] = await self.client.call("GET", f"/admin/requests/{request_id}")
        return record

    async def __aenter__(self) -> _ApiSource:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.client.__aexit__(*exc_info)


def _source(args: argparse.Namespace) -> Source:
    url = getattr(args, "url", None)
    if url:
        return _ApiSource(admin_client(url))
    path, origin = args.find_config(args.config)
    if path is None:
        raise ConfigError(
            "polyroute logs reads the store a config names (-c FILE, POLYROUTE_CONFIG or "
            f"./polyroute.yaml), or a running gateway's admin API (--url URL, {ADMIN_KEY_ENV})"
        )
    config = load_config(path)
    if config.store is None:
        raise ConfigError(f"{path} (from {origin}) has no store: section: no request log")
    if config.store.backend == "sqlite" and not Path(config.store.path).is_file():
        raise ConfigError(
            f"no store at {config.store.path} (store.path of {path}): has polyroute serve "
            "run with this config in this directory?"
        )
    return _StoreSource(build_store(config.store))


# Output ------------------------------------------------------------------------------


def line(record: dict[str, Any]) -> str:
    """One request on one line: when, how it ended, who, which model on which entry,
    how long, tokens, cost, attempts, id (and the error of one not served)."""
    usage = record.get("usage") or {}
    served = record.get("provider") or "-"
    resolved = record.get("resolved_model")
    if record.get("provider") and resolved and resolved != record["model"]:
        served += f" ({resolved})"
    attempts = len(record.get("attempts") or ())
    parts = [
        _short_time(record["time"]),
        f"{record['status']:<9}",
        f"{record['endpoint']:<10}",
        f"key={record.get('key') or '-'}",
        f"{record['model'] or '-'} -> {served}",
        _ms(record.get("duration_ms")),
        f"ttft {_ms(record.get('ttft_ms'))}",
        f"tokens {usage.get('input_tokens', 0)}/{usage.get('output_tokens', 0)}",
        _cost(record),
        f"{attempts} attempt{'s' if attempts != 1 else ''}",
        record["id"],
    ]
    text = "  ".join(parts)
    if record.get("error_type"):
        text += f"  {record['error_type']}: {_clip(record.get('error') or '', 160)}"
    return text


def describe(record: dict[str, Any]) -> str:
    """One request in full, and the timeline of its attempts (``+ms`` from its start)."""
    usage = record.get("usage") or {}
    finish = f" ({record['finish_reason']})" if record.get("finish_reason") else ""
    resolved = record.get("resolved_model")
    rows = [
        ("id", record["id"]),
        ("time", record["time"]),
        ("endpoint", record["endpoint"]),
        ("key", record.get("key") or "-"),
        ("team", record.get("team") or "-"),
        (
            "model",
            record["model"]
            + (f" -> {resolved}" if resolved not in (None, record["model"]) else ""),
        ),
        ("provider", record.get("provider") or "-"),
        ("status", f"{record['status']}{finish}"),
        ("ttft", _ms(record.get("ttft_ms"))),
        ("duration", _ms(record.get("duration_ms"))),
        (
            "tokens",
            f"input {usage.get('input_tokens', 0)} (cached {usage.get('cached_input_tokens', 0)})"
            f", output {usage.get('output_tokens', 0)}"
            f" (reasoning {usage.get('reasoning_tokens', 0)})",
        ),
        ("cost", f"{_cost(record)} ({record.get('cost_status')})"),
    ]
    if record.get("cache"):
        rows.append(("cache", record["cache"]))
    if record.get("error_type"):
        rows.append(("error", f"{record['error_type']}: {record.get('error') or ''}"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    lines.append("attempts")
    lines += [_timeline(number, attempt) for number, attempt in enumerate(record["attempts"], 1)]
    if not record["attempts"]:
        lines.append("  (none: no provider was tried)")
    if record.get("content") is not None:
        lines.append("content")
        lines.append(json.dumps(record["content"], indent=2, ensure_ascii=False))
    return "\n".join(lines)


def _timeline(number: int, attempt: dict[str, Any]) -> str:
    """``2  +1003 ms  backup (gpt-4o)  ok  from char 812  ttft 80 ms  2100 ms  400 chars``."""
    parts = [
        f"  {number}",
        f"+{_ms(attempt.get('started_ms'))}",
        f"{attempt['provider']} ({attempt['model']})",
        attempt["outcome"],
        f"from char {attempt.get('relay_offset') or 0}",
        f"ttft {_ms(attempt.get('ttft_ms'))}",
        _ms(attempt.get("duration_ms")),
        f"{attempt.get('chars') or 0} chars",
    ]
    if attempt.get("error_type"):
        status = f" {attempt['status_code']}" if attempt.get("status_code") else ""
        parts.append(f"{attempt['error_type']}{status}: {_clip(attempt.get('error') or '', 200)}")
    return "  ".join(parts)


def _json(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False)


def _short_time(text: str) -> str:
    """``2025-03-10 12:00:00.123Z``: to the millisecond, still UTC."""
    moment = datetime.fromisoformat(text).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.0f} ms"


def _cost(record: dict[str, Any]) -> str:
    usd = record.get("cost_usd")
    return "unpriced" if usd is None else f"${usd:.6f}"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# Arguments ----------------------------------------------------------------------------


def since(text: str) -> datetime:
    """``10m``, ``2h``, ``7d``, ``30s`` ago; an RFC 3339 time with its offset; or a date
    (midnight UTC)."""
    if match := _AGO.fullmatch(text.strip()):
        amount, unit = match.groups()
        return datetime.now(UTC) - timedelta(**{_UNITS[unit]: float(amount)})
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a duration (10m, 2h, 7d), an RFC 3339 time with its offset "
            "(2026-01-31T09:00:00Z) or a date (2026-01-31)"
        )
    return moment


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number from 1 to {MAX_PAGE}")
    return value
