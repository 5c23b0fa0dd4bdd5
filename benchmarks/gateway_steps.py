"""``python -m benchmarks.gateway_steps``: polyroute serve's CPU a stream step by step,
against the floor proxy's for the same steps (issue 28's "per-request fixed cost").

Each row (the floor proxy, then polyroute serve from this tree; one worker on core 1,
the upstream and gateway.py's load client on core 0) serves gateway.py's saturated
answer (``--chunks``, 64 by default, at once) at concurrency ``--conc`` while py-spy
samples its Python stacks (``--rate`` a second, every thread) for ``--seconds``. Each
sample on the event loop's thread is given to the first step below whose frames it
holds; a step's share of the samples times the row's CPU a stream (gateway.py's
accounting, the same window) is its time a stream. A sample is wall time in a frame
that is not waiting for the loop's next event, so a step's figure includes the system
calls it makes; steps of a few microseconds are within the sampling's noise.

  python -m benchmarks.gateway_steps              # about a minute; needs py-spy
  python -m benchmarks.gateway_steps --conc 1 --chunks 1

Needs py-spy (``pip install py-spy``; it reads the process's memory, so it must run as
the same user, or root, where ptrace is allowed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.__main__ import upstream
from benchmarks.gateway import PEERS, gateway, measure

STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "upstream request: sent, its answer's head read (aiohttp client)",
        ("ClientSession._request", "ClientRequest.write_bytes"),
    ),
    ("the answer's head to the client", ("StreamResponse.prepare", "ChatExchange.opening")),
    (
        "the end: last chunk, write_eof, outcome, accounting",
        (
            "write_eof",
            "Gateway._account",
            "ChatExchange.closing",
            "RouterStream._succeed",
            "RouterStream._ended",
            "AttemptEngine.succeed",
            "_end_of_answer",
        ),
    ),
    (
        "chunks read from the upstream and checked",
        (
            "StreamReader.readany",
            "AsyncStreamIterator",
            "stream_event_batches",
            "PassThroughReader",
            "_parse (",
            "_first_batch",
        ),
    ),
    (
        "chunks written to the client",
        ("StreamResponse.write (", "ChatExchange.encode", "Gateway._stream"),
    ),
    (
        "the request read, decoded, validated; its key",
        (
            "BaseRequest.read",
            "_json_body",
            "ChatDialect.read",
            "read_chat_body",
            "normalize_messages",
            "_key_refuses",
            "model_and_stream",
        ),
    ),
    (
        "routing: the engine, candidates, claim, the upstream request built",
        (
            "Router.stream",
            "RouterStream",
            "AttemptEngine",
            "ChatRequest.build",
            "build_request",
            "Provider.stream_batches",
            "Provider._post",
        ),
    ),
    (
        "HTTP server: the request parsed, dispatched (aiohttp)",
        ("RequestHandler", "UrlDispatcher", "Application._handle", "GuardedHandler"),
    ),
    ("the upstream's bytes into aiohttp's client protocol", ("ResponseHandler.data_received",)),
    ("socket reads, both sockets", ("_read_ready",)),
)
OTHER = "the event loop: tasks, timers, callbacks"
IDLE = ("select (selectors", "poll (")


def steps_of(samples: Path) -> tuple[Counter[str], int]:
    """Samples of py-spy's raw output by step (the event loop's thread only), and how
    many were busy."""
    steps: Counter[str] = Counter()
    busy = 0
    for line in samples.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "MainThread" not in frames[0] or any(idle in frames[-1] for idle in IDLE):
            continue
        busy += int(count)
        text = ";".join(frames[1:])
        step = next((name for name, marks in STEPS if any(m in text for m in marks)), OTHER)
        steps[step] += int(count)
    return steps, busy


@dataclass
class Profile:
    """One row's CPU a stream (us), the busy samples it was split by, and each step's
    part of it (us)."""

    row: str
    cpu_us_per_stream: float
    samples: int
    steps: dict[str, float]


def profiled(name: str, base: str, args: argparse.Namespace, scratch: Path) -> Profile:
    """Row ``name`` under load and py-spy: its CPU a stream, and that split by step."""
    samples = scratch / f"{name}.txt"
    with ExitStack() as stack:
        target = gateway(name, {"saturated": base}, 1, {0, 1}, stack)
        measure(target, "saturated", args.conc, 2, 0)  # warm-up: imports, pools, caches
        spy: list[subprocess.Popen[bytes]] = []
        record = [args.py_spy, "record", "-p", str(target.pid), "-r", str(args.rate)]
        record += ["-d", str(round(args.seconds)), "--threads", "-f", "raw", "-o", str(samples)]
        window = (
            lambda: spy.append(subprocess.Popen(record, stdout=subprocess.DEVNULL)),
            lambda: None,
        )
        outcome = measure(target, "saturated", args.conc, args.seconds, 0, window)
        spy[0].wait(60)
    cpu_us = 1000 * float(outcome["cpu_ms_per_stream"])
    steps, busy = steps_of(samples)
    names = [*(step for step, _ in STEPS), OTHER]
    return Profile(name, cpu_us, busy, {s: cpu_us * steps[s] / max(busy, 1) for s in names})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conc", type=int, default=50)
    parser.add_argument("--chunks", type=int, default=64, help="text chunks per answer")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy's samples a second")
    beside = Path(sys.executable).with_name("py-spy")  # installed in this venv
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or str(beside))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gateway-steps-results.json"))
    args = parser.parse_args()
    PEERS.mkdir(exist_ok=True)  # polyroute serve's config goes there
    with ExitStack() as stack, tempfile.TemporaryDirectory() as scratch:
        base = stack.enter_context(upstream(args.chunks, 0.0, 0))
        floor = profiled("floor-proxy", base, args, Path(scratch))
        ours = profiled("polyroute", base, args, Path(scratch))
    print(f"concurrency {args.conc}, {args.chunks} chunks an answer, {args.seconds:g} s a row")
    print(f"{'step':68} {'floor us':>9} {'polyroute us':>13} {'extra':>7}")
    rows = [*ours.steps.items(), ("CPU a stream", ours.cpu_us_per_stream)]
    for step, mine in rows:
        its = floor.steps.get(step, floor.cpu_us_per_stream)
        print(f"{step:68} {its:>9.0f} {mine:>13.0f} {mine - its:>+7.0f}")
    settings = {"conc": args.conc, "chunks": args.chunks, "seconds": args.seconds}
    results = {"settings": settings, "rows": [asdict(floor), asdict(ours)]}
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
