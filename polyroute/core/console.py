"""Routing events as short lines for a person at a terminal.

``configure_logging(fmt="console")`` renders through :class:`HumanRenderer`: one line
per event (``sim-flaky  HTTP 503: Service Unavailable``, then ``-> retry sim-flaky (1/1)
in 0.17 s``), what a machine needs (timestamps, every field) left to the JSON format.
The gateway's lines start with the request's short id (``3f9a61c2  -> retry ...``):
requests served at once interleave, and the id tells them apart.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

_Fields = MutableMapping[str, Any]

_RESET = "\x1b[0m"
_COLOURS = {"warning": "\x1b[33m", "error": "\x1b[31m", "critical": "\x1b[31m"}
_DONE_COLOUR = "\x1b[32m"
_DIM = "\x1b[2m"

# Fields a human line never shows in the generic form.
_MACHINE_FIELDS = {"event", "level", "timestamp", "request_id", "logger"}


def _error(fields: _Fields) -> str:
    """The error without the provider name the line already starts with."""
    text = str(fields.get("error", fields.get("error_type", "")))
    provider = fields.get("provider")
    return text.removeprefix(f"{provider}: ") if provider else text


def _start(f: _Fields) -> str:
    model = f["model"]
    asked = f.get("requested_model")
    head = f"{asked} = {model}" if asked and asked != model else str(model)
    line = f"{head}: " + (", ".join(f["candidates"]) or "no provider can serve it")
    if f.get("excluded"):  # "claude (claude-sonnet-4-5): no key: ANTHROPIC_API_KEY..."
        line += "; skipped " + ", ".join(map(str, f["excluded"]))
    if f.get("fallbacks"):
        line += "; then model " + " -> ".join(f["fallbacks"])
    return line


def _retry(f: _Fields) -> str:
    # The failure is the line above (attempt.failed): this one is the decision.
    count = f" ({f['retry']}/{f['retries']})" if "retry" in f else ""
    return f"-> retry {f['provider']}{count} in {f['delay_s']:.2f} s"


def _relay(f: _Fields) -> str:
    verb = "continues" if f.get("mode") == "continue" else "restarts"
    died = f"{f['from_provider']} died after {f['chars']} chars"
    return f"-> {f['to_provider']} {verb} the answer ({died})"


def _done(f: _Fields) -> str:
    line = f"done {f['chars']} chars"
    if "attempts" in f:
        line += f", {f['attempts']} attempt{'s' if f['attempts'] != 1 else ''}"
    line += f", {f['duration_ms']:.0f} ms"
    if f.get("completion_tokens") is not None:
        line += f", {f.get('prompt_tokens') or 0}+{f['completion_tokens']} tokens"
    return line + f" ({f['provider']})"


def _excluded(f: _Fields) -> str:
    # A later model of the fallback chain, reached: what of it cannot serve, and why.
    line = f"{f['model']}: " + (", ".join(f["candidates"]) or "no provider can serve it")
    return line + "; skipped " + ", ".join(map(str, f["excluded"]))


def _fallback(f: _Fields) -> str:
    line = f"-> fallback model {f['to_model']} on {f['to_provider']}"
    if f.get("from_provider") is None and f.get("from_model"):
        line += f" (no provider of {f['from_model']} could be tried)"
    return line


def _access(f: _Fields) -> str:
    """The gateway's access line: ``200 relay-me -> secondary 774 ms, ttft 154 ms,
    20 tokens, key ci``."""
    line = f"{f['status']} {f.get('model') or '-'}"
    if f.get("provider"):
        line += f" -> {f['provider']}"
    line += f" {f['duration_ms']:.0f} ms"
    if f.get("ttft_ms") is not None:
        line += f", ttft {f['ttft_ms']:.0f} ms"
    if f.get("completion_tokens") is not None:
        prompt = f.get("prompt_tokens")
        line += f", {prompt}+" if prompt else ", "
        line += f"{f['completion_tokens']} tokens"
    if f.get("cost_usd"):
        line += ", $" + f"{f['cost_usd']:.6f}".rstrip("0").rstrip(".")
    if f.get("key"):
        line += f", key {f['key']}"
    endpoint = f.get("endpoint")
    return line + (f" ({endpoint})" if endpoint and endpoint != "chat" else "")


def _failed(f: _Fields) -> str:
    # Each attempt's error is on its own line above; the reasons group them by entry
    # and add the entries that were not tried (cooling down, no key).
    count = f.get("attempts", 0)
    line = f"failed after {count} attempt{'' if count == 1 else 's'}"
    if f.get("reasons"):
        line += ": " + "; ".join(map(str, f["reasons"]))
    return line


_LINES: dict[str, Callable[[_Fields], str]] = {
    "route.start": _start,
    "attempt.failed": lambda f: f"{f['provider']}  {_error(f)}",
    "attempt.retry": _retry,
    "route.next_provider": lambda f: f"-> next provider {f['to_provider']}",
    "route.fallback": _fallback,
    "route.excluded": _excluded,
    "route.skip": lambda f: f"{f['provider']}  not tried: {f['reason']}",
    "retry.budget_exhausted": lambda f: f"{f['provider']}  not tried: retry budget exhausted",
    "cache.hit": lambda f: f"cache hit ({f['provider']})",
    "gateway.request": _access,
    "stream.first_chunk": lambda f: f"{f['provider']}  first chunk in {f['ttft_ms']:.0f} ms",
    "route.relay": _relay,
    "route.done": _done,
    "route.failed": _failed,
    "route.cancelled": lambda f: f"cancelled after {f['chars']} chars ({f['provider']})",
    "provider.cooldown": lambda f: f"{f['provider']}  cooling down for {f['seconds']:g} s",
    "attempt.hedge": lambda f: f"{f['provider']}  hedge started after {f['after_ms']:.0f} ms",
    "attempt.hedge_lost": lambda f: f"{f['provider']}  hedge lost, closed",
}
# Said by the lines around them (the provider shows in its failure, first chunk or done).
_SILENT = {"attempt.start"}


SHORT_ID_LENGTH = 8
"""The characters of a request id the console shows: the first ones, which differ from
one request to the next (polyroute.core.logging.new_request_id)."""


class HumanRenderer:
    """structlog renderer: one short line per event, coloured when ``colors``; with
    ``request_ids``, an event of a request starts with its short id."""

    def __init__(self, *, colors: bool, request_ids: bool = False) -> None:
        self.colors = colors
        self.request_ids = request_ids

    def __call__(self, _logger: Any, method: str, fields: _Fields) -> str:
        event = str(fields.get("event", ""))
        if event in _SILENT:
            raise structlog.DropEvent
        render = _LINES.get(event)
        try:
            line = render(fields) if render else None
        except (KeyError, TypeError, ValueError):
            line = None  # an event without the usual fields: shown in the generic form
        if line is None:
            rest = " ".join(f"{k}={v}" for k, v in fields.items() if k not in _MACHINE_FIELDS)
            line = f"{event}  {rest}".rstrip()
        colour = self._colour(event, str(fields.get("level", method)), line, fields)
        if self.request_ids and fields.get("request_id"):
            line = f"{str(fields['request_id'])[:SHORT_ID_LENGTH]}  {line}"
        return f"{colour}{line}{_RESET}" if colour else line

    def _colour(self, event: str, level: str, line: str, fields: _Fields) -> str:
        if not self.colors:
            return ""
        if event == "gateway.request":  # by its status: the level is always info
            status = str(fields.get("status", ""))
            if status.startswith("5") or status == "stream_error":
                return _COLOURS["error"]
            return _COLOURS["warning"] if status.startswith("4") else ""
        colour = _COLOURS.get(level) or (_DONE_COLOUR if event == "route.done" else "")
        return colour or (_DIM if line.startswith("->") else "")
