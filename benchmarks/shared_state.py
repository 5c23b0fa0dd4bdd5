"""``python -m benchmarks.shared_state``: what sharing routing state through Redis costs.

One run, on one machine, against a real redis-server started here:

  router    the in-process router streaming from the saturated local upstream at
            concurrency 100, state memory vs redis vs redis with limits (an rpm and a
            concurrent limit on every entry and a retry budget: two scripts per
            request); streams/s and CPU per 1,000 streams of the client process
  gateway   polyroute serve (1 worker, pinned to its own core) with the same three
            states, driven by the gateway benchmark's load client at concurrency 100,
            saturated and paced; streams/s, added TTFT, gateway CPU per stream
  freshness how long after one process opens a circuit another process's mirror says
            so (two states on one Redis, separate connections), over 200 opens

Repeats are interleaved and figures are medians; ratios are against memory in the same
repeat. Target (issue 13): redis at most 10% slower than memory at concurrency 100.

  python -m benchmarks.shared_state           # about 4 minutes
  python -m benchmarks.shared_state --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.__main__ import machine, run_client, upstream
from benchmarks.client import with_state
from benchmarks.gateway import PEERS, Target, free_port, measure, started
from tests.redis_server import RedisServer

STATES = ["memory", "redis", "redis-limits"]
CLIENT_OF = {"memory": "router", "redis": "router-redis", "redis-limits": "router-redis-limits"}


def start_gateway(
    state: str, ups: dict[str, str], redis_url: str, core: int, stack: ExitStack
) -> Target:
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    PEERS.mkdir(exist_ok=True)
    config = PEERS / f"polyroute-state-{state}-{port}.json"
    # One entry per workload, named after it: the load client asks for the workload's model.
    entries = [
        {"name": workload, "type": "openai", "base_url": f"{base}/v1", "models": [workload]}
        for workload, base in ups.items()
    ]
    body = with_state({"providers": entries, "retry": {"attempts": 1}}, state, redis_url)
    config.write_text(json.dumps(body))
    command = [sys.executable, "-m", "polyroute", "serve", "-c", str(config), "--port", str(port)]
    process = stack.enter_context(started(command, f"{root}/healthz", {core}))
    urls = {w: f"{root}/v1/chat/completions" for w in ups}
    return Target(f"polyroute-{state}", urls, {}, process.pid, str(core))


async def freshness(redis_url: str, opens: int) -> dict[str, float]:
    """Milliseconds from one state opening a circuit to another state's mirror saying so."""
    from polyroute.router.config import StateConfig
    from polyroute.router.state import build_state

    def make() -> Any:
        return build_state(
            StateConfig(backend="redis", url=redis_url, prefix="bench-freshness"),
            health=None,
            names=["a"],
            failures=1,
            cooldown_seconds=30,
            limits={},
            budget=None,
        )

    writer, reader = make(), make()
    await writer.start()
    await reader.start()
    delays = []
    try:
        for _ in range(opens):
            writer.record_success("a")
            while reader.state("a") != "closed":  # noqa: ASYNC110 - no change hook to wait on
                await asyncio.sleep(0)
            started_at = time.perf_counter()
            await writer.record_failure("a")
            while reader.state("a") != "open":  # noqa: ASYNC110 - polled every loop turn
                await asyncio.sleep(0)
            delays.append((time.perf_counter() - started_at) * 1000)
    finally:
        await writer.aclose()
        await reader.aclose()
    delays.sort()
    return {
        "opens": len(delays),
        "p50_ms": delays[len(delays) // 2],
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))],
        "max_ms": delays[-1],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    available = sorted(os.sched_getaffinity(0))
    shared, own = available[0], available[-1]  # upstream + client + redis | the measured
    redis = RedisServer().start()
    os.sched_setaffinity(redis.process.pid, {shared})  # type: ignore[union-attr]
    os.environ["POLYROUTE_BENCH_REDIS"] = redis.url
    router_runs: dict[str, list[dict[str, Any]]] = {}
    gateway_runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        with ExitStack() as stack:
            ups = {
                "saturated": stack.enter_context(upstream(64, 0.0, shared)),
                "paced": stack.enter_context(upstream(64, 10.0, shared)),
            }
            targets = {s: start_gateway(s, ups, redis.url, own, stack) for s in STATES}
            for repeat in range(args.repeats):
                order = STATES[repeat % 3 :] + STATES[: repeat % 3]
                for state in order:
                    options = ["--client", CLIENT_OF[state], "--concurrency", "100"]
                    options += ["--seconds", str(args.seconds)]
                    outcome = run_client(ups["saturated"], own, *options)
                    router_runs.setdefault(state, []).append(outcome)
                    print(
                        f"  router {state} repeat {repeat + 1}: "
                        f"{outcome['streams_per_s']:.0f} streams/s",
                        file=sys.stderr,
                        flush=True,
                    )
                for workload in ("saturated", "paced"):
                    for state in order:
                        outcome = measure(targets[state], workload, 100, args.seconds, shared)
                        gateway_runs.setdefault((state, workload), []).append(outcome)
                        print(
                            f"  gateway {state} {workload} repeat {repeat + 1}: "
                            f"{outcome['streams_per_s']:.0f} streams/s, "
                            f"errors {outcome['errors']}",
                            file=sys.stderr,
                            flush=True,
                        )
        fresh = asyncio.run(freshness(redis.url, args.opens))
    finally:
        redis.close()
    return {
        "machine": machine(),
        "settings": {"seconds": args.seconds, "repeats": args.repeats, "concurrency": 100},
        "router": summarise(router_runs, "cpu_s_per_1000"),
        "gateway": {
            workload: summarise(
                {s: gateway_runs[(s, workload)] for s in STATES}, "cpu_ms_per_stream"
            )
            for workload in ("saturated", "paced")
        },
        "freshness": fresh,
    }


def summarise(runs: dict[str, list[dict[str, Any]]], cpu_key: str) -> dict[str, Any]:
    """Per state: median streams/s and CPU, and their ratios to memory taken per repeat."""
    out = {}
    for state, results in runs.items():
        row: dict[str, Any] = {
            "streams_per_s": statistics.median(r["streams_per_s"] for r in results),
            "cpu": statistics.median(r[cpu_key] for r in results if r.get(cpu_key)),
            "cpu_unit": cpu_key,
            "errors": sum(r.get("errors", 0) for r in results),
        }
        decisions = [r["state_decisions"] for r in results if r.get("state_decisions")]
        if decisions:  # limit decisions taken in Redis or, when it was late, locally
            row["state_decisions"] = {
                where: sum(d.get(where, 0) for d in decisions) for where in ("shared", "local")
            }
        if results[0].get("ttft_p50_ms") is not None:
            row["ttft_p50_ms"] = statistics.median(r["ttft_p50_ms"] for r in results)
            row["ttft_p99_ms"] = statistics.median(r["ttft_p99_ms"] for r in results)
        memory = runs["memory"]
        row["streams_vs_memory"] = statistics.median(
            r["streams_per_s"] / m["streams_per_s"] for r, m in zip(results, memory, strict=True)
        )
        row["cpu_vs_memory"] = statistics.median(
            r[cpu_key] / m[cpu_key] for r, m in zip(results, memory, strict=True)
        )
        out[state] = row
    return out


def print_report(results: dict[str, Any]) -> None:
    def table(title: str, rows: dict[str, Any]) -> None:
        print(f"\n{title}")
        print(f"  {'state':<13} {'streams/s':>9} {'x memory':>8} {'CPU':>8} {'x memory':>8}")
        for state, row in rows.items():
            print(
                f"  {state:<13} {row['streams_per_s']:>9.0f} {row['streams_vs_memory']:>8.3f} "
                f"{row['cpu']:>8.3f} {row['cpu_vs_memory']:>8.3f}"
            )

    table("router in process, c=100 saturated (CPU s per 1,000 streams)", results["router"])
    for workload, rows in results["gateway"].items():
        table(f"polyroute serve, c=100 {workload} (CPU ms per stream)", rows)
    fresh = results["freshness"]
    print(
        f"\ncircuit opened in one process, seen by another: p50 {fresh['p50_ms']:.2f} ms, "
        f"p99 {fresh['p99_ms']:.2f} ms, max {fresh['max_ms']:.2f} ms ({fresh['opens']} opens)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--opens", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/shared-state-results.json"))
    if "--quick" in sys.argv:
        parser.set_defaults(seconds=0.5, repeats=1, opens=20)
    args = parser.parse_args()
    results = run(args)
    print_report(results)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
