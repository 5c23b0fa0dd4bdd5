"""``python -m benchmarks.embeddings``: POST /v1/embeddings through polyroute serve
against the upstream itself (issue 24), with benchmarks/gateway.py's parts.

The upstream (``benchmarks.upstream``) answers every embeddings request with the same
16 vectors of 256 floats (56 KB of JSON as floats, 22 KB as base64, encoded once).
Each of ``conc`` workers posts ``{"model", "input": [16 short strings],
"encoding_format"}`` one request after another, at concurrency 1 and 50, in each
form: ``base64`` (what OpenAI's SDKs ask by default) and ``float``. The load client,
its workers, the measured window and the gateway's CPU and RSS are gateway.py's. Rows:

  direct       the client posts to the upstream's /v1/embeddings
  floor-proxy  benchmarks/floor_proxy.py on the gateway's core: the answer's bytes
               relayed, not parsed (the most an aiohttp gateway can reach here)
  polyroute    polyroute serve (1 worker, its own core) in front of it, as a
               ``type: openai`` entry (Router.embed, then ``{base_url}/embeddings``)

Figures (medians of the repeats, the rows' order rotating): requests/s,
latency p50/p99 (to the whole answer), the gateway's CPU per request, and its
requests/s over direct's (the median of per-repeat ratios), with the target.

  python -m benchmarks.embeddings            # about 2 minutes
  python -m benchmarks.embeddings --quick    # a smoke run
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
    WIRES,
    Target,
    cell,
    focused_main,
    gateway,
    measure,
    median,
    rotated_runs,
)

WORKLOAD = "embeddings"  # also the model asked for, and the polyroute entry's name
CONCURRENCY = [1, 50]
FORMS = {"base64": "embeddings-base64", "float": "embeddings"}
"""encoding_format -> the load client's wire (benchmarks/gateway.py's WIRES)."""
TARGET = (50, 0.8)
"""polyroute's requests/s at least this many times direct's at this concurrency."""


def run(args: argparse.Namespace) -> dict[str, Any]:
    available = sorted(os.sched_getaffinity(0))
    shared, own = available[0], available[-1]  # upstream + client | the gateway
    PEERS.mkdir(exist_ok=True)  # polyroute serve's config goes there
    with ExitStack() as stack:
        base = stack.enter_context(upstream(1, 0.0, shared))
        direct = Target("direct", {WORKLOAD: f"{base}/v1/embeddings"}, dialect=WORKLOAD)
        floor = gateway("floor-proxy", {WORKLOAD: base}, own, {own}, stack)
        floor.urls[WORKLOAD] = floor.urls[WORKLOAD].replace(
            WIRES["chat"].path, WIRES[WORKLOAD].path
        )
        floor.dialect = WORKLOAD
        served = gateway("polyroute-embeddings", {WORKLOAD: base}, own, {own}, stack)
        served.name = "polyroute"
        targets = [direct, floor, served]

        def run_one(target: Target, point: tuple[str, int]) -> dict[str, Any]:
            form, concurrency = point
            target.dialect = FORMS[form]
            return measure(target, WORKLOAD, concurrency, args.seconds, shared)

        points = [(form, concurrency) for form in FORMS for concurrency in args.concurrency]
        measured = rotated_runs(targets, args.repeats, points, run_one)
        results = {(form, name, c): runs for (name, (form, c)), runs in measured.items()}
        cores = {target.name: target.cores for target in targets}
    rows = []
    order = [target.name for target in targets]
    forms = list(FORMS)
    for (form, name, concurrency), runs in sorted(
        results.items(),
        key=lambda item: (forms.index(item[0][0]), item[0][2], order.index(item[0][1])),
    ):
        baseline = results[(form, "direct", concurrency)]
        ratios = [
            r["streams_per_s"] / d["streams_per_s"] for r, d in zip(runs, baseline, strict=True)
        ]
        rows.append(
            {
                "form": form,
                "gateway": name,
                "cores": cores[name],
                "concurrency": concurrency,
                "errors": sum(r["errors"] for r in runs),
                "requests_per_s": median(runs, "streams_per_s"),
                "latency_p50_ms": median(runs, "latency_p50_ms"),
                "latency_p99_ms": median(runs, "latency_p99_ms"),
                "cpu_ms_per_request": median(runs, "cpu_ms_per_stream"),
                "peak_rss_mb": median(runs, "peak_rss_mb"),
                "vs_direct": statistics.median(ratios),
                "runs": runs,
            }
        )
    settings = {"seconds": args.seconds, "repeats": args.repeats, "inputs": 16, "floats": 256}
    return {"machine": machine(), "settings": settings, "rows": rows}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'form':<6} {'conc':>4} {'gateway':<11} {'cores':<5} {'requests/s':>10} {'vs direct':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'CPU ms/req':>10} {'RSS MB':>7} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['form']:<6} {r['concurrency']:>4} {r['gateway']:<11} {r['cores']:<5} "
            f"{cell(r['requests_per_s'], '.0f'):>10} {r['vs_direct']:>8.2f}x "
            f"{cell(r['latency_p50_ms'], '.2f'):>7} {cell(r['latency_p99_ms'], '.2f'):>7} "
            f"{cell(r['cpu_ms_per_request'], '.3f'):>10} "
            f"{cell(r['peak_rss_mb'], '.0f'):>7} {r['errors']:>6}"
        )
    print()
    for r in rows:
        if r["gateway"] == "polyroute" and r["concurrency"] == TARGET[0]:
            held = "met" if r["vs_direct"] >= TARGET[1] else "NOT met"
            print(
                f"target: polyroute embeddings ({r['form']}) >= {TARGET[1]}x direct's "
                f"requests/s at c={TARGET[0]}: {r['vs_direct']:.2f}x, {held}"
            )


def main() -> None:
    focused_main(__doc__, "benchmarks/embeddings-results.json", CONCURRENCY, run, print_table)


if __name__ == "__main__":
    main()
