"""``python -m benchmarks.overload``: one gateway worker past what it can serve (issue 30).

One upstream streams answers paced like an LLM's: 64 chunks, 20 ms apart (about 1.3 s
an answer). ``conc`` clients each send one streamed chat request after another to
``polyroute serve`` (one worker, on its own core; the upstream and the clients share
the other, and are lean asyncio protocols, ``benchmarks.lean``, so that this core is
not the one that saturates). A client refused with a 503 waits what its
``Retry-After`` says (1 s), as the official SDKs do, and asks again. Rows:

  uncapped   gateway.max_in_flight: 0, no front door: today's behaviour
  admitted   the defaults: 256 requests at once (gateway.max_in_flight), the rest
             refused at once with a 503 to retry
  cap-128    max_in_flight: 128 (any cap-N row: N)
  loop-lag   no cap on requests, but refused while the loop lags past 50 ms
             (gateway.max_loop_lag_ms)

Figures, per row and concurrency: answers completed per second, the admitted answers'
time to the first text (TTFT) p50 and p99, the share of requests refused (shed), and
errors (a non-503 failure or an answer cut short). The sweep of the uncapped gateway
over concurrency is how the default of 256 was chosen (docs/performance.md#overload).

  python -m benchmarks.overload                          # the issue's run: c=1000, 4 rows
  python -m benchmarks.overload --concurrency 50,100,150,200,250,300 --rows uncapped  # sweep
  python -m benchmarks.overload --rows admitted,cap-128,cap-192 # other caps (cap-N)
  python -m benchmarks.overload --quick                  # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.__main__ import announced, machine
from benchmarks.gateway import (
    PEERS,
    WIRES,
    cell,
    cpu_seconds,
    free_port,
    peak_rss_mb,
    process_tree,
    started,
)
from benchmarks.lean import load

ROWS: dict[str, dict[str, Any]] = {
    "uncapped": {"max_in_flight": 0},
    "admitted": {},
    "loop-lag": {"max_in_flight": 0, "max_loop_lag_ms": 50},
}
"""Each row's ``gateway:`` settings."""
CHUNKS, DELAY_MS = 64, 20.0
WORKLOAD = "paced"


def served(row: str, base: str, core: int, stack: ExitStack) -> tuple[str, int]:
    """polyroute serve with ``row``'s settings: its chat URL and pid."""
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    entry = {"name": WORKLOAD, "type": "openai", "base_url": f"{base}/v1", "models": [WORKLOAD]}
    config = PEERS / f"polyroute-overload-{row}-{port}.json"
    settings = ROWS[row] if row in ROWS else {"max_in_flight": int(row.removeprefix("cap-"))}
    config.write_text(json.dumps({"providers": [entry], "gateway": settings}))
    command = [sys.executable, "-m", "polyroute", "serve", "-c", str(config), "--port", str(port)]
    process = stack.enter_context(started(command, f"{root}/healthz", {core}))
    return root + WIRES["chat"].path, process.pid


@contextmanager
def lean_upstream(core: int) -> Iterator[str]:
    """The paced upstream (benchmarks.lean) on ``core``: its base URL."""
    command = [sys.executable, "-m", "benchmarks.lean", "--upstream", str(CHUNKS), str(DELAY_MS)]
    with announced(command, core) as url:
        yield url


def measure(url: str, pid: int, concurrency: int, seconds: float, core: int) -> dict[str, Any]:
    """One load run in a client process of its own on ``core``, with the gateway's CPU
    time over the measured seconds."""
    command = [sys.executable, "-m", "benchmarks.overload", "--load", url]
    command += [str(concurrency), str(seconds)]
    client = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    assert client.stdout is not None
    pids = process_tree(pid)
    if client.stdout.readline().strip() != "measure":
        raise RuntimeError("the load client failed")
    cpu_before = cpu_seconds(pids)
    if client.stdout.readline().strip() != "end":
        raise RuntimeError("the load client failed")
    cpu = cpu_seconds(pids) - cpu_before
    result: dict[str, Any] = json.loads(client.stdout.readline())
    client.wait(60)
    result["gateway_cpu_share"] = cpu / seconds
    result["peak_rss_mb"] = peak_rss_mb(pids)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    available = sorted(os.sched_getaffinity(0))
    shared, own = available[0], available[-1]  # upstream + clients | the gateway
    PEERS.mkdir(exist_ok=True)
    rows = []
    with ExitStack() as stack:
        base = stack.enter_context(lean_upstream(shared))
        for row in args.rows:
            for concurrency in args.concurrency:
                with ExitStack() as gateway:  # a fresh gateway each: no warm pools carried
                    url, pid = served(row, base, own, gateway)
                    outcome = measure(url, pid, concurrency, args.seconds, shared)
                rows.append({"row": row, "concurrency": concurrency, **outcome})
                print(f"  {row} c={concurrency}: {outcome}", file=sys.stderr, flush=True)
    settings = {"seconds": args.seconds, "chunks": CHUNKS, "delay_ms": DELAY_MS, "rows": ROWS}
    return {"machine": machine(), "settings": settings, "rows": rows}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'row':<9} {'conc':>5} {'streams/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'shed':>6} {'errors':>6} {'gw CPU':>6} {'RSS MB':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['row']:<9} {r['concurrency']:>5} {cell(r['streams_per_s'], '.0f'):>9} "
            f"{cell(r['ttft_p50_ms'], '.0f'):>9} {cell(r['ttft_p99_ms'], '.0f'):>9} "
            f"{cell(r['shed_share'], '.0%'):>6} {cell(r['error_share'], '.0%'):>6} "
            f"{cell(r['gateway_cpu_share'], '.0%'):>6} {cell(r['peak_rss_mb'], '.0f'):>6}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--concurrency", default="1000")
    parser.add_argument("--rows", default="uncapped,admitted,cap-128,loop-lag")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/overload-results.json"))
    parser.add_argument("--load", nargs=3, help=argparse.SUPPRESS)
    if "--quick" in sys.argv:
        parser.set_defaults(seconds=2.0, concurrency="300")
    args = parser.parse_args()
    if args.load:
        url, concurrency, seconds = args.load
        where = urlsplit(url)
        assert where.port is not None
        running = load(where.port, where.path, int(concurrency), float(seconds))
        outcome = asyncio.run(running)
        print(json.dumps(outcome), flush=True)
        return
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.rows = args.rows.split(",")
    outcome = run(args)
    print_table(outcome["rows"])
    args.out.write_text(json.dumps(outcome, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
