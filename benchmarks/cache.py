"""``python -m benchmarks.cache``: a response cache hit against a miss through polyroute
serve (issue 24), with benchmarks/gateway.py's parts, and the chat row beside them.

One upstream (``benchmarks.upstream``: 64 chunks at once, the "saturated" workload of
gateway.py) and one fixed streamed chat request (gateway.py's ``WIRES["chat"]`` body),
posted by ``conc`` workers one after another at concurrency 1 and 50. Rows:

  direct                  the client talks to the upstream itself (the added-TTFT base)
  polyroute               polyroute serve, no cache configured (gateway.py's chat row)
  polyroute-cache-hit     polyroute serve with ``cache: {backend: memory}``, every request
                          with ``x-polyroute-cache: use``: after the warm-up's first
                          answer is stored, every measured request is a hit (replayed,
                          no upstream call); the run fails unless every one says ``hit``
  polyroute-cache-refresh the same config, every request with ``x-polyroute-cache:
                          refresh``: every request goes upstream and its answer is stored
                          (the miss, with the store's cost; checked to say ``refresh``)

Each polyroute row is a process of its own on the gateway's core. Figures (medians of
the repeats, the rows' order rotating): streams/s, TTFT p50/p99 added over direct's,
CPU per stream, and the hit's streams/s and CPU per stream against the refresh row's
and the plain chat row's (medians of per-repeat ratios), with the target verdict.

  python -m benchmarks.cache            # about 3 minutes
  python -m benchmarks.cache --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
from contextlib import ExitStack
from typing import Any

from benchmarks.__main__ import machine, upstream
from benchmarks.gateway import (
    PEERS,
    Target,
    cell,
    focused_main,
    focused_runs,
    gateway,
    median_ratio,
    medians,
    serve_polyroute,
)

WORKLOAD = "saturated"  # also the model asked for, and the polyroute entry's name
CONCURRENCY = [1, 50]
ROWS = ["direct", "polyroute", "polyroute-cache-hit", "polyroute-cache-refresh"]
MODES = {"polyroute-cache-hit": "use", "polyroute-cache-refresh": "refresh"}
EXPECTED = {"polyroute-cache-hit": "hit", "polyroute-cache-refresh": "refresh"}
"""The x-polyroute-cache answer every measured stream of the row must carry."""
TTFT_TARGET = (1, 0.5)
"""A hit's added TTFT p50 over direct at most this many ms at this concurrency."""


def cached_gateway(name: str, base: str, core: int, stack: ExitStack) -> Target:
    """polyroute serve (1 worker, on ``core``) with the memory cache configured."""
    entry = {"name": WORKLOAD, "type": "openai", "base_url": f"{base}/v1", "models": [WORKLOAD]}
    config = {"providers": [entry], "cache": {"backend": "memory"}}
    target = serve_polyroute(name, config, WORKLOAD, core, stack)
    target.headers = {WORKLOAD: {"x-polyroute-cache": MODES[name]}}
    return target


def checked(target: Target, outcome: dict[str, Any]) -> None:
    """Fail loudly unless every measured stream of a cache row said what it must."""
    name = target.name
    if name not in EXPECTED:
        return
    said = outcome.get("cache", {})
    want = EXPECTED[name]
    if outcome["errors"] or not outcome["streams"] or said != {want: outcome["streams"]}:
        raise SystemExit(
            f"{name}: every measured stream must say x-polyroute-cache: {want}; "
            f"got {said} over {outcome['streams']} streams, {outcome['errors']} errors"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    available = sorted(os.sched_getaffinity(0))
    shared, own = available[0], available[-1]  # upstream + client | the gateway
    PEERS.mkdir(exist_ok=True)
    with ExitStack() as stack:
        base = stack.enter_context(upstream(64, 0.0, shared))
        targets = [
            cached_gateway(name, base, own, stack)
            if name in MODES
            else gateway(name, {WORKLOAD: base}, own, {own}, stack)
            for name in ROWS
        ]
        results = focused_runs(targets, args, WORKLOAD, shared, checked)
        cores = {target.name: target.cores for target in targets}
    rows = []
    for (name, concurrency), runs in sorted(
        results.items(), key=lambda item: (item[0][1], ROWS.index(item[0][0]))
    ):
        direct = results[("direct", concurrency)]
        row: dict[str, Any] = {
            "gateway": name,
            "cores": cores[name],
            "workload": WORKLOAD,
            "concurrency": concurrency,
            "errors": sum(r["errors"] for r in runs),
            "cache": {
                k: sum(r["cache"].get(k, 0) for r in runs) for k in ("hit", "miss", "refresh")
            },
            **medians(runs),
            "vs_direct": median_ratio(runs, direct, "streams_per_s"),
        }
        for p in ("p50", "p99"):  # per repeat against direct, then the median
            added = [
                r[f"ttft_{p}_ms"] - d[f"ttft_{p}_ms"]
                for r, d in zip(runs, direct, strict=True)
                if r[f"ttft_{p}_ms"] and d[f"ttft_{p}_ms"]
            ]
            row[f"added_ttft_{p}_ms"] = (
                statistics.median(added) if added and runs != direct else None
            )
        if name == "polyroute-cache-hit":
            for other, short in (("polyroute-cache-refresh", "refresh"), ("polyroute", "chat")):
                base_runs = results[(other, concurrency)]
                row[f"streams_vs_{short}"] = median_ratio(runs, base_runs, "streams_per_s")
                row[f"cpu_vs_{short}"] = median_ratio(runs, base_runs, "cpu_ms_per_stream")
        row["runs"] = runs
        rows.append(row)
    settings = {"seconds": args.seconds, "repeats": args.repeats, "chunks": 64}
    return {"machine": machine(), "settings": settings, "rows": rows}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'conc':>4} {'gateway':<23} {'streams/s':>9} {'vs direct':>9} {'+TTFT p50':>9} "
        f"{'+p99':>8} {'CPU ms/stream':>13} {'RSS MB':>7} {'errors':>6}  cache"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        said = ",".join(f"{k}={v}" for k, v in r["cache"].items() if v) or "-"
        print(
            f"{r['concurrency']:>4} {r['gateway']:<23} {cell(r['streams_per_s'], '.0f'):>9} "
            f"{cell(r['vs_direct'], '.2f'):>8}x "
            f"{cell(r['added_ttft_p50_ms'], '.2f'):>9} {cell(r['added_ttft_p99_ms'], '.2f'):>8} "
            f"{cell(r['cpu_ms_per_stream'], '.3f'):>13} {cell(r['peak_rss_mb'], '.0f'):>7} "
            f"{r['errors']:>6}  {said}"
        )
    print("\nthe hit against the miss (median of per-repeat ratios):")
    for r in rows:
        if r["gateway"] == "polyroute-cache-hit":
            print(
                f"  c={r['concurrency']}: streams/s {cell(r['streams_vs_refresh'], '.2f')}x "
                f"refresh's, {cell(r['streams_vs_chat'], '.2f')}x chat's; CPU/stream "
                f"{cell(r['cpu_vs_refresh'], '.2f')}x refresh's, "
                f"{cell(r['cpu_vs_chat'], '.2f')}x chat's"
            )
    for r in rows:
        if r["gateway"] == "polyroute-cache-hit" and r["concurrency"] == TTFT_TARGET[0]:
            added = r["added_ttft_p50_ms"]
            held = "met" if added is not None and added <= TTFT_TARGET[1] else "NOT met"
            print(
                f"\ntarget: a hit's added TTFT p50 <= {TTFT_TARGET[1]} ms at "
                f"c={TTFT_TARGET[0]}: {cell(added, '.2f')} ms, {held}"
            )


def main() -> None:
    focused_main(__doc__, "benchmarks/cache-results.json", CONCURRENCY, run, print_table)


if __name__ == "__main__":
    main()
