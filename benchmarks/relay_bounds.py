"""``python -m benchmarks.relay_bounds``: how close to the floor proxy a polyroute
gateway could come at all (issue 28's targets), measured against two bounds.

Rows, each a process of its own on the gateway's core, started anew every repeat
(benchmarks/gateway.py's ``fresh_runs``), serving gateway.py's saturated answer (64
chunks at once) at each concurrency:

  direct        the load client talks to the upstream itself (for the added TTFT)
  floor-proxy   benchmarks/floor_proxy.py: read the request, POST it, copy the bytes back
  shell         polyroute serve doing everything it does before routing (admission,
                the request read, decoded and validated, the key, the accounting after),
                then relaying the upstream's bytes as the floor proxy does
  lean          the same shell, then the least a routed relay that keeps the answer's id
                and model can do: the attempt engine's first candidate and its claim, the
                upstream request, each read's whole events relayed with the id and model
                rewritten, the end checked, the success recorded; no text counted, no
                chunk checked, no relay, no record
  polyroute     polyroute serve from this tree

``shell`` and ``lean`` are not polyroute: they run a copy of this tree's ``polyroute``
package with ``benchmarks/relay_bounds.patch`` applied (chosen by ``POLYROUTE_BOUND``),
which replaces the chat handler's routing with the bound's relay. They say what the
rest of polyroute's gateway costs before any routing (``shell``) and what a dedicated
stream path could cost at best (``lean``): issue 28's targets (CPU a stream at most 1.5x
the floor proxy's; added TTFT p50 at c=1 within 0.1 ms of its) are out of reach of any
design whose ``lean`` row misses them.

  python -m benchmarks.relay_bounds                  # about 12 minutes
  python -m benchmarks.relay_bounds --concurrency 50 --repeats 2

Figures: per row and concurrency, medians over the repeats of the CPU a stream, the
ratio to the floor proxy's (each repeat's pair, then the median) and the added TTFT p50
(each repeat against direct). If the patch no longer applies (app.py changed), the run
stops and says so: update the patch to the handler's new shape.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
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
    gateway,
    median,
    median_added,
    median_ratio,
    serve_polyroute,
)

ROOT = Path(__file__).resolve().parent.parent
PATCH = Path(__file__).with_suffix(".patch")
ROWS = ["direct", "floor-proxy", "shell", "lean", "polyroute"]
WORKLOAD = "saturated"


def bounded_copy(scratch: Path, patch: Path = PATCH) -> Path:
    """This tree's ``polyroute`` package, copied under ``scratch`` with ``patch`` (the
    bounds' patch) applied: the directory to put first on the rows' ``sys.path``."""
    shutil.copytree(ROOT / "polyroute", scratch / "polyroute")
    applied = subprocess.run(
        ["git", "apply", str(patch)], cwd=scratch, capture_output=True, text=True
    )
    if applied.returncode:
        raise SystemExit(f"{patch.name} does not apply to this tree:\n{applied.stderr}")
    return scratch


def serve(row: str, base: str, core: int, tree: Path | None, stack: ExitStack) -> Target:
    """``polyroute serve`` (one worker, on ``core``) with ``row``'s bound, from ``tree``
    (the bounds' patched copy; ``None``: this checkout)."""
    entry = {"name": WORKLOAD, "type": "openai", "base_url": f"{base}/v1", "models": [WORKLOAD]}
    env = {"POLYROUTE_BOUND": row if row in ("shell", "lean") else ""}
    config = {"providers": [entry]}
    return serve_polyroute(row, config, WORKLOAD, core, stack, env=env, tree=tree)


def run(args: argparse.Namespace) -> dict[str, Any]:
    available = sorted(os.sched_getaffinity(0))
    shared, own = available[0], available[-1]  # upstream + load client | the gateway
    PEERS.mkdir(exist_ok=True)
    with ExitStack() as outer:
        scratch = Path(outer.enter_context(tempfile.TemporaryDirectory(prefix="bounds-")))
        bounded = bounded_copy(scratch)  # both bounds: the row picks one (POLYROUTE_BOUND)
        trees = {"shell": bounded, "lean": bounded, "polyroute": None}
        base = outer.enter_context(upstream(64, 0.0, shared))

        def start(stack: ExitStack) -> list[Target]:
            return [
                serve(row, base, own, trees[row], stack)
                if row in trees
                else gateway(row, {WORKLOAD: base}, own, {own}, stack)
                for row in args.rows
            ]

        results = focused_fresh_runs(start, args, WORKLOAD, shared)
    rows = []
    for (name, concurrency), runs in results.items():
        floor = results.get(("floor-proxy", concurrency), [])
        direct = results.get(("direct", concurrency), [])
        row: dict[str, Any] = {
            "row": name,
            "concurrency": concurrency,
            "streams_per_s": median(runs, "streams_per_s"),
            "cpu_ms_per_stream": median(runs, "cpu_ms_per_stream"),
            "vs_floor": median_ratio(runs, floor, "cpu_ms_per_stream") if floor else None,
            "added_ttft_p50_ms": None,
        }
        if direct and name != "direct":
            row["added_ttft_p50_ms"] = median_added(runs, direct, "ttft_p50_ms")
        rows.append(row)
    rows.sort(key=lambda r: (r["concurrency"], args.rows.index(r["row"])))
    settings = {"seconds": args.seconds, "repeats": args.repeats, "chunks": 64}
    return {"machine": machine(), "settings": settings, "rows": rows}


def print_rows(rows: list[dict[str, Any]]) -> None:
    print("| conc | row | streams/s | CPU ms/stream | vs floor | +TTFT p50 ms |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        ratio = "-" if r["vs_floor"] is None else f"{r['vs_floor']:.2f}x"
        print(
            f"| {r['concurrency']} | {r['row']} | {r['streams_per_s']:,.0f} | "
            f"{cell(r['cpu_ms_per_stream'], '.3f')} | {ratio} | "
            f"{cell(r['added_ttft_p50_ms'], '.2f')} |"
        )


def main() -> None:
    results = "benchmarks/relay-bounds-results.json"
    focused_main(__doc__, results, [1, 50, 200], run, print_rows, repeats=6, rows=ROWS)


if __name__ == "__main__":
    main()
