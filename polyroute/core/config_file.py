"""Reading a YAML, TOML or JSON config file, with errors that point at the spot.

A syntax error reads ``routes.yaml:3:11: expected ',' or ']'``, then the line and a
caret under the column, the way compilers show them.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml

from polyroute.core.errors import ConfigError

_PARSERS: dict[str, Any] = {
    ".yaml": yaml.safe_load,
    ".yml": yaml.safe_load,
    ".toml": tomllib.loads,
    ".json": json.loads,
}
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def read_config_file(path: Path) -> Any:
    """The parsed content of a ``.yaml``, ``.yml``, ``.toml`` or ``.json`` file.

    Raises :class:`ConfigError` for an unknown format, an unreadable, empty or
    unparseable file (naming ``file:line:column`` and showing the line).
    """
    parse = _PARSERS.get(path.suffix.lower())
    if parse is None:
        raise ConfigError(
            f"unknown config format {path.suffix!r} for {path}; use .yaml, .toml or .json"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from None
    if not text.strip():
        raise ConfigError(f"{path} is empty")
    try:
        data = parse(text)
    except yaml.YAMLError as error:
        raise _syntax_error(path, text, *_yaml_position(error, text)) from None
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        found = _TOML_POSITION.search(message)
        line, column = (int(found[1]), int(found[2])) if found else (0, 0)
        raise _syntax_error(path, text, _TOML_POSITION.sub("", message), line, column) from None
    except json.JSONDecodeError as error:
        raise _syntax_error(path, text, error.msg, error.lineno, error.colno) from None
    if data is None:
        raise ConfigError(f"{path} is empty (only comments)")
    return data


# The two kinds of config file: the key each has, and where each belongs.
_KINDS = {
    "router": (
        "providers",
        "a router config",
        "use it with `polyroute chat -c {path}`; its type: simulated entries start their "
        "own servers",
    ),
    "simulator": (
        "upstreams",
        "a simulator file",
        "serve it with `polyroute simulate -c {path}` and point a router config's "
        "providers at the URLs it prints",
    ),
}


def read_config_of_kind(path: Path, kind: Literal["router", "simulator"]) -> Any:
    """:func:`read_config_file`, refusing a file of the other kind with what it is and
    which command takes it (a simulator file given to ``chat -c``, and the reverse)."""
    data = read_config_file(path)
    key, name, _ = _KINDS[kind]
    other_key, other_name, where = _KINDS["simulator" if kind == "router" else "router"]
    if isinstance(data, dict) and other_key in data and key not in data:
        raise ConfigError(
            f"{path} is {other_name} ({other_key}:), not {name} ({key}:): "
            + where.format(path=path)
        )
    return data


def _yaml_position(error: yaml.YAMLError, text: str) -> tuple[str, int, int]:
    problem = str(getattr(error, "problem", None) or error)
    context = getattr(error, "context", None)
    mark = getattr(error, "problem_mark", None)
    lines = text.splitlines()
    if mark is None or mark.line >= len(lines) or not lines[mark.line].strip():
        # The problem is found at the end of the file (an unclosed bracket): show where
        # the unfinished construct began instead.
        mark = getattr(error, "context_mark", None) or mark
    message = f"{context}: {problem}" if context else problem
    return (message, mark.line + 1, mark.column + 1) if mark is not None else (message, 0, 0)


def _syntax_error(path: Path, text: str, message: str, line: int, column: int) -> ConfigError:
    """``file:line:column: message``, then the line and a caret (1-based positions;
    0 when the parser gave none)."""
    if not line:
        return ConfigError(f"{path}: {message}")
    lines = text.splitlines()
    shown = lines[line - 1] if line <= len(lines) else ""
    caret = " " * (max(column, 1) - 1) + "^"
    return ConfigError(f"{path}:{line}:{column}: {message}\n  {shown}\n  {caret}")
