"""``python -m benchmarks.governance``: what keys, budgets and cost cost through polyroute
serve (issue 25), with benchmarks/gateway.py's parts.

One upstream (``benchmarks.upstream``: 64 chunks at once, the "saturated" workload of
gateway.py) and gateway.py's streamed chat request, posted by ``conc`` workers one after
another at concurrency 1 and 50. Rows, each polyroute serve (1 worker) on the gateway's
core:

  polyroute        the plain gateway: no keys, its entry without a price (unpriced)
  governed-memory  a key from the store (SQLite) in a team, each with a budget (so
                   every request reserves its worst case on both and settles its
                   cost, and its spend row goes to the store's ledger), the entry
                   priced (every answer costed), state: memory
  polyroute-redis  the plain gateway with state: redis (a redis-server started here)
  governed-redis   governed-memory with state: redis: the reservation and the
                   settlement are Lua scripts on Redis

The budgets are large enough never to refuse. Every repeat starts the four gateways anew
(benchmarks/gateway.py's ``fresh_runs``: one process of the same code can be several per
cent faster than another for as long as it runs). Figures (medians of the repeats, the
rows' order rotating): streams/s, TTFT p50, CPU per stream, and each governed row
against the plain one of its state backend in the same repeat (medians of per-repeat
ratios), with the target: at least 0.9x the streams/s and at most 1.1x the CPU per
stream.

  python -m benchmarks.governance            # about 4 minutes
  python -m benchmarks.governance --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.request
from contextlib import ExitStack
from typing import Any

from benchmarks.__main__ import machine, upstream
from benchmarks.gateway import (
    PEERS,
    Target,
    cell,
    focused_fresh_runs,
    focused_main,
    free_port,
    median_ratio,
    medians,
    serve_polyroute,
)
from tests.redis_server import RedisServer

WORKLOAD = "saturated"  # also the model asked for, and the polyroute entry's name
CONCURRENCY = [1, 50]
ROWS = ["polyroute", "governed-memory", "polyroute-redis", "governed-redis"]
PLAIN = {"governed-memory": "polyroute", "governed-redis": "polyroute-redis"}
"""Each governed row's baseline: the plain gateway on the same state backend."""
TARGET = (0.9, 1.1)
"""A governed row's streams/s at least, and its CPU per stream at most, this many times
the plain gateway's."""
ADMIN_KEY = "bench-admin-0123456789abcdef"
BUDGET = {"usd": 1e9, "period": "day"}


def admin_post(root: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        root + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        created: dict[str, Any] = json.load(answer)
    return created


def governed_config(name: str, base: str, port: int) -> dict[str, Any]:
    """Row ``name``'s config for a gateway on ``port`` (``governed-*``: a store, the admin
    API and a priced entry; the key and team come from :func:`admit` once it runs)."""
    entry: dict[str, Any] = {
        "name": WORKLOAD,
        "type": "openai",
        "base_url": f"{base}/v1",
        "models": [WORKLOAD],
    }
    config: dict[str, Any] = {"providers": [entry]}
    if name.startswith("governed"):
        entry["price"] = {"input": 2.5, "output": 10.0}
        config["gateway"] = {"admin_key_env": "BENCH_ADMIN_KEY"}
        config["store"] = {"backend": "sqlite", "path": str(PEERS / f"store-{name}-{port}.db")}
        config["logs"] = {"enabled": False}  # the request log is issue 26's benchmark
    return config


ADMIN_ENV = {"BENCH_ADMIN_KEY": ADMIN_KEY}
"""The environment a governed gateway reads its admin key from."""


def admit(root: str) -> dict[str, dict[str, str]]:
    """A team and a key in it, both with budgets, made through the admin API of the
    gateway at ``root``: the headers its requests send."""
    admin_post(root, "/admin/teams", {"name": "bench", "budget": BUDGET})
    key = admin_post(root, "/admin/keys", {"name": "bench", "team": "bench", "budget": BUDGET})
    return {WORKLOAD: {"Authorization": f"Bearer {key['key']}"}}


def served(name: str, base: str, core: int, redis_url: str | None, stack: ExitStack) -> Target:
    """polyroute serve (``governed-*``: a store with a key in a team, both with budgets
    and created through the admin API, and a priced entry)."""
    port = free_port()
    config = governed_config(name, base, port)
    if redis_url is not None:
        config["state"] = {"backend": "redis", "url": redis_url}
    target = serve_polyroute(name, config, WORKLOAD, core, stack, port=port, env=ADMIN_ENV)
    if name.startswith("governed"):
        target.headers = admit(f"http://127.0.0.1:{port}")
    return target


def run(args: argparse.Namespace) -> dict[str, Any]:
    available = sorted(os.sched_getaffinity(0))
    shared, own = available[0], available[-1]  # upstream + client + redis | the gateway
    PEERS.mkdir(exist_ok=True)
    redis = RedisServer().start()
    try:
        with ExitStack() as stack:
            base = stack.enter_context(upstream(64, 0.0, shared))

            def start(gateways: ExitStack) -> list[Target]:
                return [
                    served(name, base, own, redis.url if name.endswith("redis") else None, gateways)
                    for name in ROWS
                ]

            results = focused_fresh_runs(start, args, WORKLOAD, shared)
    finally:
        redis.close()
    rows = []
    for (name, concurrency), runs in sorted(
        results.items(), key=lambda item: (item[0][1], ROWS.index(item[0][0]))
    ):
        plain = results[(PLAIN.get(name, name), concurrency)]
        rows.append(
            {
                "gateway": name,
                "cores": str(own),
                "concurrency": concurrency,
                **medians(runs, ("streams_per_s", "ttft_p50_ms", "cpu_ms_per_stream")),
                "vs_plain_streams": median_ratio(runs, plain, "streams_per_s"),
                "vs_plain_cpu": median_ratio(runs, plain, "cpu_ms_per_stream"),
                "runs": runs,
            }
        )
    settings = {"seconds": args.seconds, "repeats": args.repeats, "chunks": 64}
    return {"machine": machine(), "settings": settings, "rows": rows}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'conc':>4} {'gateway':<16} {'streams/s':>9} {'vs plain':>8} {'TTFT p50':>8} "
        f"{'CPU ms/stream':>13} {'vs plain':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['concurrency']:>4} {r['gateway']:<16} {cell(r['streams_per_s'], '.0f'):>9} "
            f"{cell(r['vs_plain_streams'], '.2f'):>7}x {cell(r['ttft_p50_ms'], '.2f'):>8} "
            f"{cell(r['cpu_ms_per_stream'], '.3f'):>13} {cell(r['vs_plain_cpu'], '.2f'):>7}x"
        )
    print()
    top = max(r["concurrency"] for r in rows)  # 50 unless --concurrency says otherwise
    for r in rows:
        if r["gateway"] not in PLAIN or r["concurrency"] != top:
            continue
        streams, cpu = r["vs_plain_streams"], r["vs_plain_cpu"]
        held = streams is not None and cpu is not None
        held = held and streams >= TARGET[0] and cpu <= TARGET[1]
        print(
            f"target: {r['gateway']} >= {TARGET[0]}x {PLAIN[r['gateway']]}'s streams/s and <= "
            f"{TARGET[1]}x its CPU per stream at c={top}: "
            f"{cell(streams, '.2f')}x and {cell(cpu, '.2f')}x, {'met' if held else 'NOT met'}"
        )


def main() -> None:
    focused_main(__doc__, "benchmarks/governance-results.json", CONCURRENCY, run, print_table)


if __name__ == "__main__":
    main()
