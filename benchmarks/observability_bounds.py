"""``python -m benchmarks.observability_bounds``: how close to the plain gateway any
request log and tracing could come (issue 26's target), against a bound.

Rows, each polyroute serve (1 worker) on the gateway's core, started anew every repeat,
serving benchmarks/observability.py's load (the saturated answer, 64 chunks at once)
with its configs:

  polyroute  the plain gateway: no store, no tracing
  stored     a SQLite store, the request log off (the spend ledger's row a request)
  floor      observed's config, and a request does only the log's and tracing's writes:
             the first request's row (as the store takes it, with this request's id
             and time) queued to the log's writer and written to SQLite in its batches,
             and the first request's two spans, encoded once, queued to the span
             processor and exported over OTLP/HTTP; no watch, no ``traceparent``, no
             record, no row or span built, no GenAI metric
  observed   the request log on and tracing on (sample ratio 1.0), from this tree

``floor`` is not polyroute: it runs a copy of this tree's ``polyroute`` package with
``benchmarks/observability_bounds.patch`` applied (chosen by
``POLYROUTE_OBSERVE_FLOOR``). Whatever a design builds, it still writes a row and
exports two spans a request, so issue 26's target (at c=50, at least 0.9x the plain
gateway's streams/s and at most 1.15x its CPU a stream) is out of reach of any design of
the log and tracing on this stack if ``floor`` misses it or leaves no room for the
building.

  python -m benchmarks.observability_bounds                  # about 10 minutes
  python -m benchmarks.observability_bounds --repeats 2 --seconds 2   # a smoke run

Figures: per row, medians over the repeats of streams/s and CPU a stream, and the ratio
to the plain gateway's (each repeat's pair, then the median) with its quartiles. If the
patch no longer applies, the run stops and says so: update the patch.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.__main__ import machine, upstream
from benchmarks.gateway import (
    PEERS,
    Target,
    cell,
    focused_fresh_runs,
    focused_main,
    median,
    median_ratio,
    ratios,
)
from benchmarks.observability import TARGET, WORKLOAD, database, port_of, receiver, served, stats
from benchmarks.relay_bounds import bounded_copy

PATCH = Path(__file__).with_suffix(".patch")
ROWS = ["polyroute", "stored", "floor", "observed"]


def quartiles(runs: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> list[float]:
    """The per-repeat ratios' (gateway.py's ``ratios``) first and third quartiles."""
    found = ratios(runs, base, key)
    if len(found) < 2:
        return found * 2
    low, _, high = statistics.quantiles(found, n=4)
    return [low, high]


def run(args: argparse.Namespace) -> dict[str, Any]:
    available = sorted(os.sched_getaffinity(0))
    shared, own = available[0], available[-1]  # upstream + client + receiver | the gateway
    PEERS.mkdir(exist_ok=True)
    with ExitStack() as outer:
        scratch = Path(outer.enter_context(tempfile.TemporaryDirectory(prefix="bounds-")))
        bounded = bounded_copy(scratch, PATCH)
        base = outer.enter_context(upstream(64, 0.0, shared))
        collector = outer.enter_context(receiver(shared))
        floors: list[Path] = []  # every floor gateway's log

        def one(row: str, stack: ExitStack) -> Target:
            if row != "floor":
                return served(row, base, own, collector, stack)
            env = {"POLYROUTE_OBSERVE_FLOOR": "1"}
            target = served(
                row, base, own, collector, stack, like="observed", tree=bounded, env=env
            )
            floors.append(database(port_of(target)))
            return target

        def start(stack: ExitStack) -> list[Target]:
            return [one(row, stack) for row in args.rows]

        results = focused_fresh_runs(start, args, WORKLOAD, shared)
        # The gateways have stopped (their exporters flushed): proof that floor wrote.
        exported = stats(collector)
    written = {"rows": 0, "spans": exported.get("spans bench-floor", 0)}
    for path in set(floors):  # a port used again is one file
        with sqlite3.connect(path) as db:
            written["rows"] += db.execute("SELECT count(*) FROM request_log").fetchone()[0]
    rows = []
    for (name, concurrency), runs in results.items():
        plain = results[("polyroute", concurrency)]
        rows.append(
            {
                "row": name,
                "concurrency": concurrency,
                "streams_per_s": median(runs, "streams_per_s"),
                "cpu_ms_per_stream": median(runs, "cpu_ms_per_stream"),
                "vs_plain_streams": median_ratio(runs, plain, "streams_per_s"),
                "vs_plain_cpu": median_ratio(runs, plain, "cpu_ms_per_stream"),
                "vs_plain_cpu_quartiles": quartiles(runs, plain, "cpu_ms_per_stream"),
                "runs": runs,
            }
        )
        if name == "floor":
            rows[-1]["wrote"] = written
    rows.sort(key=lambda r: (r["concurrency"], args.rows.index(r["row"])))
    settings = {"seconds": args.seconds, "repeats": args.repeats, "chunks": 64}
    return {"machine": machine(), "settings": settings, "rows": rows}


def print_rows(rows: list[dict[str, Any]]) -> None:
    print("| conc | row | streams/s | vs plain | CPU ms/stream | vs plain (quartiles) |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        low, high = r["vs_plain_cpu_quartiles"]
        print(
            f"| {r['concurrency']} | {r['row']} | {r['streams_per_s']:,.0f} | "
            f"{cell(r['vs_plain_streams'], '.2f')}x | {cell(r['cpu_ms_per_stream'], '.3f')} | "
            f"{cell(r['vs_plain_cpu'], '.2f')}x ({low:.2f}-{high:.2f}) |"
        )
    print(
        f"\ntarget at c=50: >= {TARGET[0]}x the plain gateway's streams/s, <= {TARGET[1]}x its CPU"
    )
    for wrote in (r["wrote"] for r in rows if "wrote" in r):
        print(f"floor wrote {wrote['rows']} rows and exported {wrote['spans']} spans")


def main() -> None:
    results = "benchmarks/observability-bounds-results.json"
    focused_main(
        __doc__, results, [50], run, print_rows, seconds=6.0, repeats=12, rows=ROWS,
        required=("polyroute",),
    )  # fmt: skip


if __name__ == "__main__":
    main()
