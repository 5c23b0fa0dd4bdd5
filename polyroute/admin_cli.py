"""``polyroute keys``, ``polyroute teams`` and ``polyroute spend``: the admin API of a
running gateway from the terminal (argument parsing and output only; docs/cli.md).

The gateway is ``--url`` (default http://127.0.0.1:8000), the admin key
``POLYROUTE_ADMIN_KEY``. A key's secret is printed once, by ``create`` and ``rotate``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from polyroute.admin_client import DEFAULT_URL, AdminClient
from polyroute.core.errors import ConfigError, InvalidRequestError
from polyroute.terminal import table

ADMIN_KEY_ENV = "POLYROUTE_ADMIN_KEY"
PERIODS = ("day", "week", "month", "total")


def add_commands(
    command: Callable[[str, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``keys``, ``teams`` and ``spend`` with ``command(name, help)`` (cli.py's);
    their actions take the ``common`` options too."""
    keys = command("keys", "gateway keys kept in the store (the admin API)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = _action(actions, common, "create", "make a key; its secret is printed this once")
    create.add_argument("name")
    create.add_argument("--team", help="the name of its team")
    create.add_argument(
        "--model", action="append", dest="models", help="a model it may use (repeat); default: any"
    )
    _limit_options(create)
    create.add_argument("--expires-at", help="RFC 3339 time (2026-12-31T00:00:00Z)")
    create.add_argument(
        "--log-content",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="its requests' content in the access log and the request log (default: the "
        "gateway's setting)",
    )
    _action(actions, common, "list", "every key (--all: revoked ones too)").add_argument(
        "--all", action="store_true", help="revoked keys too"
    )
    _action(actions, common, "show", "one key").add_argument("id")
    _action(
        actions, common, "revoke", "revoke a key: 401 on every gateway within a second"
    ).add_argument("id")
    rotate = _action(actions, common, "rotate", "a new secret; the old one works for --grace-s")
    rotate.add_argument("id")
    rotate.add_argument("--grace-s", type=float, default=0.0, help="seconds (default 0)")

    teams = command("teams", "teams of keys: shared limits and budget (the admin API)")
    actions = teams.add_subparsers(dest="action", required=True)
    create = _action(actions, common, "create", "make a team")
    create.add_argument("name")
    _limit_options(create)
    _action(actions, common, "list", "every team")
    _action(actions, common, "show", "one team").add_argument("id")
    update = _action(actions, common, "update", "change a team's name, limits, budget or metadata")
    update.add_argument("id")
    update.add_argument("--name")
    _limit_options(update)
    _action(actions, common, "delete", "delete a team without active keys").add_argument("id")

    spend = command("spend", "spend from the gateway's ledger (the admin API)")
    _admin_options(spend)
    spend.add_argument(
        "--group-by", choices=["key", "team", "model", "provider", "day"], default="key"
    )
    spend.add_argument("--from", dest="start", help="RFC 3339 time or date (included)")
    spend.add_argument("--to", dest="end", help="RFC 3339 time or date (excluded)")


def _action(
    actions: Any, common: argparse.ArgumentParser, name: str, help: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(name, help=help, parents=[common])
    _admin_options(parser)
    return parser


def _admin_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the gateway (default {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="the admin API's JSON answer")


def _limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=_count, help="requests per minute (none: no limit)")
    parser.add_argument("--tpm", type=_count, help="tokens per minute (none: no limit)")
    parser.add_argument(
        "--budget", type=_budget, metavar="USD/PERIOD", help="e.g. 5/day, 200/month; none"
    )
    parser.add_argument("--metadata", type=_json_object, help="a JSON object")


async def keys(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        if args.action == "create":
            body = _given(args, "name", "team", "models", "rpm", "tpm", "budget")
            body |= _given(args, "expires_at", "log_content", "metadata")
            _print_secret(args, await client.call("POST", "/admin/keys", body))
        elif args.action == "list":
            query = {"include_revoked": "true"} if args.all else None
            listed = await client.call("GET", "/admin/keys", query=query)
            _print_list(args, listed, _KEY_COLUMNS)
        elif args.action == "show":
            _print_record(args, await client.call("GET", f"/admin/keys/{args.id}"))
        elif args.action == "revoke":
            key = await client.call("DELETE", f"/admin/keys/{args.id}")
            _done(args, key, f"revoked key {key['id']} ({key['name']})")
        else:
            body = {"grace_s": args.grace_s}
            _print_secret(args, await client.call("POST", f"/admin/keys/{args.id}/rotate", body))
    return 0


async def teams(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        if args.action == "create":
            body = _given(args, "name", "rpm", "tpm", "budget", "metadata")
            _print_record(args, await client.call("POST", "/admin/teams", body))
        elif args.action == "list":
            _print_list(args, await client.call("GET", "/admin/teams"), _TEAM_COLUMNS)
        elif args.action == "show":
            _print_record(args, await client.call("GET", f"/admin/teams/{args.id}"))
        elif args.action == "update":
            body = _given(args, "name", "rpm", "tpm", "budget", "metadata")
            if not body:
                raise InvalidRequestError("nothing to change: give --name, --rpm, --tpm, ...")
            _print_record(args, await client.call("PATCH", f"/admin/teams/{args.id}", body))
        else:
            team = await client.call("DELETE", f"/admin/teams/{args.id}")
            _done(args, team, f"deleted team {team['id']}")
    return 0


async def spend(args: argparse.Namespace) -> int:
    query = {"group_by": args.group_by}
    query |= {name: value for name, value in (("from", args.start), ("to", args.end)) if value}
    async with _client(args) as client:
        answer = await client.call("GET", "/admin/spend", query=query)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    rows = [
        (
            "-" if row["group"] is None else str(row["group"]),
            str(row["requests"]),
            str(row["input_tokens"]),
            str(row["output_tokens"]),
            f"{row['cost_usd']:.6f}",
        )
        for row in answer["data"]
    ]
    table([args.group_by.upper(), "REQUESTS", "INPUT", "OUTPUT", "COST_USD"], rows)
    return 0


def _client(args: argparse.Namespace) -> AdminClient:
    return admin_client(args.url)


def admin_client(url: str) -> AdminClient:
    """A client of ``url``'s admin API with the key in ``POLYROUTE_ADMIN_KEY``; raises
    :class:`ConfigError` when it is not set."""
    admin_key = os.environ.get(ADMIN_KEY_ENV, "").strip()
    if not admin_key:
        raise ConfigError(
            f"{ADMIN_KEY_ENV} is not set: it must hold the gateway's admin key "
            "(the value of the variable its gateway.admin_key_env names)"
        )
    return AdminClient(url, admin_key)


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options given (``none`` ones as null), as the admin API's fields."""
    return {name: _none(getattr(args, name)) for name in names if getattr(args, name) is not None}


_NONE = "none"


def _none(value: Any) -> Any:
    return None if value == _NONE else value


def _count(text: str) -> int | str:
    if text.lower() == _NONE:
        return _NONE
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (or none)") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 (or none)")
    return value


def _budget(text: str) -> dict[str, Any] | str:
    if text.lower() == _NONE:
        return _NONE
    usd, _, period = text.partition("/")
    try:
        amount = float(usd)
    except ValueError:
        amount = -1.0
    if amount < 0 or period not in PERIODS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give USD/PERIOD, PERIOD one of {', '.join(PERIODS)} (5/day), or none"
        )
    return {"usd": amount, "period": period}


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object")
    return value


_KEY_COLUMNS = ["id", "name", "status", "team", "display_prefix", "rpm", "tpm", "budget"]
_TEAM_COLUMNS = ["id", "name", "rpm", "tpm", "budget"]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict) and "usd" in value:
        return f"{value['usd']:g}/{value['period']}"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _print_list(args: argparse.Namespace, answer: Any, columns: list[str]) -> None:
    if args.json:
        print(json.dumps(answer, indent=2))
        return
    rows = [[_cell(item.get(column)) for column in columns] for item in answer["data"]]
    table([column.upper() for column in columns], rows)


def _print_record(args: argparse.Namespace, record: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(record, indent=2))
        return
    shown = [(name, _cell(value)) for name, value in record.items() if name not in ("object",)]
    width = max(len(name) for name, _ in shown)
    for name, value in shown:
        print(f"{name.ljust(width)}  {value}")


def _print_secret(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """A key and, this once, its secret: last on stdout, so that ``| tail -1`` has it."""
    _print_record(args, record)
    if not args.json:
        print("polyroute: the secret (key) is shown this once: keep it now", file=sys.stderr)


def _done(args: argparse.Namespace, record: dict[str, Any], line: str) -> None:
    print(json.dumps(record, indent=2) if args.json else line)
