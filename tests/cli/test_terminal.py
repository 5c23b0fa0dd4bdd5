"""`polyroute chat -v` on a real terminal (a pseudo-terminal): one human line per event,
never inside the answer's line, colour unless NO_COLOR; JSON lines when redirected."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli, simulated, write_config

QUICK = {"first_chunk_ms": 5, "chunk_gap_ms": 5}


def relay_config(tmp_path: Path) -> Path:
    """Two entries for model m; the first drops its answer after four chunks."""
    drops = simulated(
        "drops", ["m"], latency=QUICK, failures={"drop_after": {"rate": 1, "chunks": 4}}
    )
    return write_config(tmp_path / "r.yaml", drops, simulated("next", ["m"], latency=QUICK))


def on_terminal(tmp_path: Path, *args: str, no_color: bool) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on one pseudo-terminal; what it showed."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "POLYROUTE_CONFIG")}
    if no_color:
        env["NO_COLOR"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "polyroute", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        cwd=tmp_path,
        env=env,
    )
    os.close(follower)
    shown = bytearray()
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: every copy of the follower is closed, the child is gone
            break
        if not data:
            break
        shown += data
    os.close(leader)
    return process.wait(timeout=60), shown.decode()


@pytest.mark.parametrize("no_color", [False, True])
def test_events_never_land_inside_the_answer_line(tmp_path: Path, no_color: bool) -> None:
    config = str(relay_config(tmp_path))
    code, shown = on_terminal(
        tmp_path, "chat", "-v", "-c", config, "-m", "m", "Hi", no_color=no_color
    )
    assert code == 0, shown
    assert ("\x1b[" in shown) is not no_color
    lines = re.sub(r"\x1b\[[0-9;]*m", "", shown).split("\r\n")
    answer_start = next(i for i, line in enumerate(lines) if line.startswith("[simulated drops]"))
    # The answer's first line ends where the upstream died; the events follow on lines
    # of their own, then the continuation on a new line.
    died = len(lines[answer_start])
    assert lines[answer_start + 1] == (
        f"drops  the upstream closed the connection after {died} characters"
    )
    assert lines[answer_start + 2] == "-> next provider next"
    assert (
        lines[answer_start + 3] == f"-> next continues the answer (drops died after {died} chars)"
    )
    continuation = lines[answer_start + 4]
    assert continuation.startswith(" ")
    assert "->" not in continuation
    total = died + len(continuation)
    assert lines[answer_start + 5].startswith(f"done {total} chars, 2 attempts, ")
    assert lines[1] == "m: drops, next"  # the route, in words


async def test_redirected_output_keeps_the_answer_whole_and_events_as_json(
    tmp_path: Path,
) -> None:
    result = await run_cli(
        "chat", "-v", "-c", str(relay_config(tmp_path)), "-m", "m", "Hi", cwd=tmp_path
    )
    assert result.code == 0, result.err
    assert result.out.count("\n") == 1  # one line: nothing was inserted into the answer
    assert result.out.startswith("[simulated drops] ")
    assert '"event": "route.relay"' in result.err
