"""``python -m benchmarks.gateway_instructions``: CPU instructions per stream of a gateway,
counted by valgrind's callgrind, for figures that a shared machine's noise cannot move.

Each row runs under ``valgrind --tool=callgrind`` with collection off, takes a warm-up
of gateway.py's load client, then counts every instruction its process executes in the
load client's measured window, while it streams gateway.py's "saturated" answer
(``--chunks``, 64 by default, at once) for ``seconds`` at concurrency ``conc``; less
what the process executes in an idle window as long (timers, a store's polls, writers'
flushes: work by the second, not by the stream, and under valgrind's slowness a large
share of a window), divided by the streams started in that window. At
concurrency 1 only one stream is ever in flight at the window's edges, so the figure is
the cost of one stream to within a stream (benchmarks/instructions.py counts the
library's routed streams in-process the same way); at higher concurrency the work of streams in
flight at the edges is counted too (the window should hold many more). Rows:

  floor-proxy   benchmarks/floor_proxy.py, the least an aiohttp relay does
  polyroute     polyroute serve (chat completions) from this tree
  TREE          polyroute serve from another checkout (``--tree NAME=PATH``), such as
                a ``git worktree`` of an earlier commit, to measure a change
  governed      (``--governed``) this tree's gateway with keys, budgets and cost on, as
                benchmarks/governance.py's governed-memory row

  python -m benchmarks.gateway_instructions                # about 2 minutes
  python -m benchmarks.gateway_instructions --tree before=/tmp/old --conc 50
  python -m benchmarks.gateway_instructions --dialect messages   # Anthropic's, end to end

``--dialect messages``: the client speaks Anthropic's Messages, the upstream answers in
Anthropic's events, and polyroute's entry is of type ``anthropic`` (its text deltas
relayed as they came), against the floor proxy relaying the same. ``--dialect
embeddings``: ``POST /v1/embeddings`` in base64 (benchmarks/embeddings.py's request and
answer; ``--chunks`` does not apply), instructions per request.

Needs valgrind (``apt-get install valgrind``). Valgrind runs the process about 50 times
slower: streams/s here mean nothing, instructions per stream do. An instruction count is
not a time (it does not see cache misses or system calls' waits), but two rows' ratio
says how much more work one does per stream, and the same code measures the same twice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from benchmarks import governance
from benchmarks.__main__ import upstream
from benchmarks.gateway import PEERS, WIRES, Target, free_port, measure, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent


ENTRIES = {
    "chat": ("openai", "/v1", "/v1/chat/completions"),
    "messages": ("anthropic", "/anthropic", "/anthropic/v1/messages"),
    "embeddings": ("openai", "/v1", "/v1/embeddings"),
}
"""Per dialect: polyroute's entry type, its base URL's path on the upstream, and the
floor proxy's path (after the upstream's name)."""
WIRE_OF = {"embeddings": "embeddings-base64"}
"""The load client's wire where it is not the dialect's name: embeddings are asked in
base64, as OpenAI's SDKs ask them (benchmarks/embeddings.py's base64 form)."""


def instructions_per_stream(
    name: str, tree: Path | None, base: str, run: tuple[str, int, float], scratch: Path
) -> dict[str, float | str]:
    """Run row ``name`` (``tree``: polyroute's checkout; ``None``: the floor proxy; a
    name starting ``governed``: benchmarks/governance.py's governed-memory gateway, in
    chat) under callgrind and count its instructions per stream; ``run``: the dialect,
    the concurrency and the seconds counted."""
    dialect, conc, seconds = run
    kind, base_path, floor_path = ENTRIES[dialect]
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    env = None
    if tree is None:
        command = [sys.executable, "-m", "benchmarks.floor_proxy", json.dumps({"saturated": base})]
        command.append(str(port))
        url, cwd = f"{root}/saturated{floor_path}", ROOT
    else:
        config = scratch / f"{name}.json"
        if name.startswith("governed"):
            config.write_text(json.dumps(governance.governed_config(name, base, port)))
            env = {**os.environ, **governance.ADMIN_ENV}
        else:
            entry = {"name": "saturated", "type": kind, "base_url": f"{base}{base_path}"}
            config.write_text(json.dumps({"providers": [{**entry, "models": ["saturated"]}]}))
        command = [sys.executable, "-m", "polyroute", "serve", "-c", str(config)]
        command += ["--port", str(port)]
        url, cwd = root + WIRES[dialect].path, tree  # the checkout's own package first
    out = scratch / f"callgrind-{name}.out"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    process = subprocess.Popen(
        [*valgrind, f"--callgrind-out-file={out}", *command],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {1}),
    )
    try:
        wait_until_ready(f"{root}/healthz", process, seconds=300)
        headers = governance.admit(root) if name.startswith("governed") else {}
        wire = WIRE_OF.get(dialect, dialect)
        target = Target(name, {"saturated": url}, headers, process.pid, "1", wire)
        measure(target, "saturated", conc, 3, 0)  # warm-up: imports, pools, caches
        control = ["callgrind_control"]

        def instrument(on: bool) -> None:
            switch = [*control, "-i", "on" if on else "off", str(process.pid)]
            subprocess.run(switch, check=True, capture_output=True)

        window = (lambda: instrument(True), lambda: instrument(False))
        outcome = measure(target, "saturated", conc, seconds, 0, window)
        loaded = _dumped(out, process.pid, 1)
        # What the gateway does with no request at all (timers, a store's polls, its
        # writers' flushes) is not a stream's work: counted over an idle window of the
        # same length and taken off.
        instrument(True)
        time.sleep(seconds)
        instrument(False)
        idle = _dumped(out, process.pid, 2)
    finally:
        process.terminate()
        process.wait(120)
    streams = max(outcome["streams"], 1)
    return {
        "row": name,
        "streams": streams,
        "instructions_per_stream": (loaded - idle) / streams,
        "idle_instructions_per_s": idle / seconds,
    }


def _dumped(out: Path, pid: int, part: int) -> int:
    """Have callgrind dump what it counted since its last dump (``part`` of ``out``),
    and return that count."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    dump = Path(f"{out}.{part}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if dump.exists():
            totals = [
                int(line.split()[1])
                for line in dump.read_text().splitlines()
                if line.startswith(("summary:", "totals:"))
            ]
            if totals:
                return max(totals)
        time.sleep(0.2)  # the dump is written by the process, after callgrind_control returns
    raise RuntimeError(f"callgrind wrote no totals to {dump}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conc", type=int, default=1)
    parser.add_argument("--dialect", choices=sorted(ENTRIES), default="chat")
    parser.add_argument("--chunks", type=int, default=64, help="text chunks per answer")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument(
        "--governed", action="store_true", help="add this tree's governed-memory gateway"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/gateway-instructions-results.json")
    )
    args = parser.parse_args()
    rows: list[tuple[str, Path | None]] = [("floor-proxy", None), ("polyroute", ROOT)]
    rows += [(name, Path(path)) for name, _, path in (t.partition("=") for t in args.tree)]
    if args.governed:
        if args.dialect != "chat":
            parser.error("--governed measures chat completions only")
        PEERS.mkdir(exist_ok=True)  # the governed gateway's store goes there
        rows.append(("governed", ROOT))
    results = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as scratch:
        base = stack.enter_context(upstream(args.chunks, 0.0, 0))
        for name, tree in rows:
            run = (args.dialect, args.conc, args.seconds)
            results.append(instructions_per_stream(name, tree, base, run, Path(scratch)))
    floor = float(results[0]["instructions_per_stream"])
    print(
        f"{args.dialect}, concurrency {args.conc}, {args.chunks} chunks an answer, "
        f"{args.seconds:g} s a row"
    )
    header = f"{'row':14} {'streams':>8} {'M instructions/stream':>22} {'vs floor':>9}"
    print(f"{header} {'idle M/s':>9}")
    for row in results:
        per, idle = float(row["instructions_per_stream"]), float(row["idle_instructions_per_s"])
        print(
            f"{row['row']:14} {row['streams']:>8} {per / 1e6:>22.3f} {per / floor:>8.2f}x"
            f" {idle / 1e6:>9.2f}"
        )
    settings = {
        "dialect": args.dialect,
        "conc": args.conc,
        "chunks": args.chunks,
        "seconds": args.seconds,
    }
    args.out.write_text(json.dumps({"settings": settings, "rows": results}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
