"""``python -m benchmarks``: polyroute against the raw floor and its peers, in one run.

The upstream runs in its own process on one core; every client run is a fresh process
on the other core. For each workload, concurrency and repeat, the clients run one after
another in an order that rotates between repeats, so machine drift hits all alike.
Figures are medians over the repeats, with their spread (min..max), and ratios to the
floor measured in the same run. Results: a table on stdout, a JSON file, a PNG plot.

  python -m benchmarks                   # the full suite (about ten minutes)
  python -m benchmarks --quick           # a smoke run of a few seconds
  python -m benchmarks --baseline-tree ../old --clients floor,router,router@baseline
      # the router of another checkout (say, the last release) measured in the same run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import Any

CLIENTS = ["floor", "provider", "router", "router-tools", "openai-sdk", "litellm"]
BASELINE = "@baseline"
"""A client name ending so runs that client of the ``--baseline-tree`` checkout."""
PEER_MODULES = {"openai-sdk": "openai", "litellm": "litellm"}
FIGURES = [
    "streams_per_s",
    "chunks_per_s",
    "cpu_s_per_1000",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "peak_rss_mb",
    "import_s",
]


def cores() -> tuple[int | None, int | None]:
    """(upstream core, client core), when the machine has two to give."""
    available = sorted(os.sched_getaffinity(0))
    return (available[-1], available[0]) if len(available) >= 2 else (None, None)


@contextmanager
def upstream(chunks: int, delay_ms: float, cpu: int | None) -> Iterator[str]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.upstream",
        "--chunks",
        str(chunks),
        "--delay-ms",
        str(delay_ms),
    ]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    with announced(command) as url:
        yield url


@contextmanager
def announced(command: list[str], core: int | None = None) -> Iterator[str]:
    """A server process (on ``core``, if given) that prints ``ready PORT`` once it
    listens: its base URL, until the block ends and it is stopped."""
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, preexec_fn=pin)
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().split()
        if ready[:1] != ["ready"]:
            raise RuntimeError(f"the upstream did not start: {ready}")
        yield f"http://127.0.0.1:{ready[1]}"
    finally:
        process.terminate()
        process.wait(10)


def run_client(
    base: str, cpu: int | None, *options: str, tree: Path | None = None
) -> dict[str, Any]:
    """One client process; with ``tree``, that checkout's client and polyroute (``-m``
    puts the working directory first on the import path)."""
    command = [sys.executable, "-m", "benchmarks.client", "--base", base, *options]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=900, check=False, cwd=tree
    )
    if done.returncode != 0:
        raise RuntimeError(f"client {options} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summarise(runs: list[dict[str, Any]], floor: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians with min..max, and ratios to the floor taken per repeat (the floor ran
    in the same repeat, moments apart), then the median of those: drift between repeats
    moves every client alike and cancels out of the ratio."""
    summary: dict[str, Any] = {"runs": len(runs), "raw": runs}
    for figure in ("streams_per_s", "cpu_s_per_1000"):
        pairs = [
            run[figure] / base[figure]
            for run, base in zip(runs, floor, strict=True)
            if run.get(figure) and base.get(figure)
        ]
        if pairs:
            summary[f"{figure}_vs_floor"] = statistics.median(pairs)
            summary[f"{figure}_vs_floor_spread"] = [min(pairs), max(pairs)]
    for figure in FIGURES:
        values = [run[figure] for run in runs if run.get(figure) is not None]
        if values:
            summary[figure] = statistics.median(values)
            summary[f"{figure}_spread"] = [min(values), max(values)]
    return summary


def streaming(
    args: argparse.Namespace, clients: list[str], up_cpu: int | None, client_cpu: int | None
) -> list[dict[str, Any]]:
    rows = []
    for workload, delay_ms, seconds in (
        ("throughput", 0.0, args.seconds),
        ("paced 10 ms", 10.0, args.paced_seconds),
    ):
        with upstream(args.chunks, delay_ms, up_cpu) as base:
            for concurrency in args.concurrency:
                runs: dict[str, list[dict[str, Any]]] = {client: [] for client in clients}
                for repeat in range(args.repeats):
                    order = clients[repeat % len(clients) :] + clients[: repeat % len(clients)]
                    for client in order:
                        runs[client].append(
                            run_client(
                                base,
                                client_cpu,
                                "--client",
                                client.removesuffix(BASELINE),
                                "--concurrency",
                                str(concurrency),
                                "--seconds",
                                str(seconds),
                                tree=args.baseline_tree if client.endswith(BASELINE) else None,
                            )
                        )
                        print(
                            f"  {workload} c={concurrency} {client} run {repeat + 1}: "
                            f"{runs[client][-1]['streams_per_s']:.0f} streams/s",
                            file=sys.stderr,
                        )
                for client in clients:
                    summary = summarise(runs[client], runs.get("floor", runs[client]))
                    rows.append(
                        {
                            "workload": workload,
                            "concurrency": concurrency,
                            "client": client,
                            **summary,
                        }
                    )
    return rows


def failover(
    args: argparse.Namespace, up_cpu: int | None, client_cpu: int | None
) -> dict[str, Any]:
    """Time to first chunk through the router, healthy vs first entry answering 503 at once."""
    with upstream(args.chunks, 0.0, up_cpu) as base:
        healthy, failing = [], []
        for _ in range(args.repeats):
            options = ["--client", "router", "--concurrency", "1", "--seconds", str(args.seconds)]
            healthy.append(run_client(base, client_cpu, *options))
            failing.append(run_client(base, client_cpu, *options, "--failover"))
    healthy_ms = statistics.median(run["ttft_p50_ms"] for run in healthy)
    failing_ms = statistics.median(run["ttft_p50_ms"] for run in failing)
    return {
        "healthy_ttft_p50_ms": healthy_ms,
        "failover_ttft_p50_ms": failing_ms,
        "failover_cost_ms": failing_ms - healthy_ms,
    }


def idle(args: argparse.Namespace, up_cpu: int | None, client_cpu: int | None) -> dict[str, Any]:
    with upstream(args.chunks, 0.0, up_cpu) as base:
        return run_client(base, client_cpu, "--idle", str(args.idle))


def ratio(row: dict[str, Any], figure: str) -> str:
    value = row.get(f"{figure}_vs_floor")
    return "-" if value is None else f"{value:.2f}x"


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'workload':<12} {'conc':>5} {'client':<11} {'streams/s':>10} {'vs floor':>8} "
        f"{'CPU s/1k':>9} {'vs floor':>8} {'TTFT p50':>9} {'p99':>8} {'RSS MB':>7} {'import s':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        speed, cpu = ratio(row, "streams_per_s"), ratio(row, "cpu_s_per_1000")
        print(
            f"{row['workload']:<12} {row['concurrency']:>5} {row['client']:<11} "
            f"{row['streams_per_s']:>10.0f} {speed:>8} {row['cpu_s_per_1000']:>9.2f} {cpu:>8} "
            f"{row.get('ttft_p50_ms') or 0:>8.1f}ms {row.get('ttft_p99_ms') or 0:>6.1f}ms "
            f"{row['peak_rss_mb']:>7.0f} {row['import_s']:>8.2f}"
        )


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({row["workload"] for row in rows})
    figure, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 4), squeeze=False)
    for axis, workload in zip(axes[0], workloads, strict=True):
        for client in dict.fromkeys(row["client"] for row in rows):
            points = sorted(
                (r["concurrency"], r["streams_per_s"])
                for r in rows
                if r["workload"] == workload and r["client"] == client
            )
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=client)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("concurrent streams")
        axis.set_ylabel("streams/s (median)")
        axis.set_title(workload)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


def machine() -> dict[str, Any]:
    versions = {}
    for name in ("polyroute", "aiohttp", "openai", "litellm", "httpx"):
        with suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "versions": versions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds: a smoke run")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help=f"another checkout whose clients run under the names CLIENT{BASELINE}",
    )
    parser.add_argument("--concurrency", default="1,100,1000")
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--idle", type=int, default=10_000, help="idle streams to hold open")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/performance.png"))
    if "--quick" in sys.argv:  # smaller defaults; options given explicitly still win
        parser.set_defaults(concurrency="1,10", repeats=1, seconds=0.3, paced_seconds=0.5, idle=50)
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    clients = [
        c
        for c in args.clients.split(",")
        if (c not in PEER_MODULES or importlib.util.find_spec(PEER_MODULES[c]))
        and (not c.endswith(BASELINE) or args.baseline_tree is not None)
    ]
    skipped = sorted(set(args.clients.split(",")) - set(clients))
    up_cpu, client_cpu = cores()
    rows = streaming(args, clients, up_cpu, client_cpu)
    results = {
        "machine": machine(),
        "pinned": {"upstream": up_cpu, "client": client_cpu},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "plot")},
        "peers_not_installed": skipped,
        "streaming": rows,
        "failover": failover(args, up_cpu, client_cpu),
        "idle": idle(args, up_cpu, client_cpu),
    }
    print_table(rows)
    print(f"\nfailover (first entry answers 503 at once), TTFT p50: {results['failover']}")
    print(f"idle streams held open: {results['idle']}")
    if skipped:
        print(f"peers not installed (pip install -e '.[bench]'): {', '.join(skipped)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    drew = plot(rows, args.plot)
    print(f"\nwrote {args.out}" + (f" and {args.plot}" if drew else " (no matplotlib: no plot)"))


if __name__ == "__main__":
    main()
