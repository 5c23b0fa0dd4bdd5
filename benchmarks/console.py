"""``python -m benchmarks.console``: what the console (issue 29) costs a gateway under load,
with benchmarks/gateway.py's parts.

One upstream (``benchmarks.upstream``: 64 chunks at once, the "saturated" workload of
gateway.py) and gateway.py's streamed chat request, posted by ``conc`` workers one after
another. Rows, each polyroute serve (1 worker) on the gateway's core:

  polyroute        the plain gateway: no admin key, so no console
  console-idle     the same with gateway.admin_key_env: the console's tally observes
                   every request and its sampler closes a second into the history,
                   nobody watching
  console-5-tabs   console-idle with 5 ``GET /admin/live`` streams open (five tabs of
                   the Live page), read by a process on the shared core for the whole
                   run; each must get its snapshot every second, load or not

Figures (medians of the repeats, the rows' order rotating): streams/s, TTFT p50, CPU per
stream, each console row against the plain gateway in the same repeat, each gateway's
CPU per second without load (all three over the same 4 x ``--seconds`` before the load
starts: what the sampler and the streams cost by themselves), and the snapshots each
live stream received. The target: the console with 5 tabs open costs no
measurable share: at least 0.97x the plain gateway's streams/s and at most 1.03x its CPU
per stream (about the spread of two runs of the same gateway on a quiet machine); and
the streams' own CPU, measured without load, next to the gateway's under it.

  python -m benchmarks.console            # about 2 minutes
  python -m benchmarks.console --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.__main__ import machine, upstream
from benchmarks.gateway import (
    PEERS,
    Target,
    cell,
    focused_main,
    focused_runs,
    free_port,
    median_ratio,
    medians,
    process_tree,
    serve_polyroute,
)

WORKLOAD = "saturated"  # also the model asked for, and the polyroute entry's name
CONCURRENCY = [50]
ROWS = ["polyroute", "console-idle", "console-5-tabs"]
TABS = 5
TARGET = (0.97, 1.03)
"""The 5-tab row's streams/s at least, and its CPU per stream at most, this many times
the plain gateway's."""
ADMIN_KEY = "bench-admin-0123456789abcdef"


def served(name: str, base: str, core: int, shared: int, stack: ExitStack) -> Target:
    """polyroute serve (``console-*``: with an admin key; ``console-5-tabs``: and five
    live streams read by :func:`watch` in a process on the ``shared`` core)."""
    port = free_port()
    entry = {"name": WORKLOAD, "type": "openai", "base_url": f"{base}/v1", "models": [WORKLOAD]}
    config: dict[str, Any] = {"providers": [entry]}
    if name.startswith("console"):
        config["gateway"] = {"admin_key_env": "BENCH_ADMIN_KEY"}
    env = {"BENCH_ADMIN_KEY": ADMIN_KEY}
    target = serve_polyroute(name, config, WORKLOAD, core, stack, port=port, env=env)
    if name == "console-5-tabs":
        stack.enter_context(Watchers(f"http://127.0.0.1:{port}", shared))
    return target


class Watchers:
    """``python -m benchmarks.console --watch ROOT``: the five tabs' streams, from when
    each got its opening event until the run ends."""

    seen: dict[str, Any] = {}
    """The snapshots each stream received, and the seconds they were open."""

    def __init__(self, root: str, core: int) -> None:
        self.command = [sys.executable, "-m", "benchmarks.console", "--watch", root]
        self.core = core

    def __enter__(self) -> Watchers:
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {self.core}),
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "open":
            raise RuntimeError("the live streams did not open")
        return self

    def __exit__(self, *_: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.stdout is not None
        Watchers.seen.update(json.loads(self.process.stdout.readline()))
        self.process.wait(10)


async def watch(root: str) -> None:
    """Open :data:`TABS` live streams as the page does, say ``open``, count each one's
    snapshots until SIGTERM, then print the counts and the seconds (one JSON line)."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    counts = [0] * TABS
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with aiohttp.ClientSession() as session:
        answers = [await session.get(f"{root}/admin/live", headers=headers) for _ in range(TABS)]
        for answer in answers:
            if answer.status != 200 or not (await answer.content.readuntil(b"\n\n")):
                raise SystemExit(f"/admin/live answered {answer.status}")
        print("open", flush=True)
        started = time.monotonic()

        async def read(index: int, answer: aiohttp.ClientResponse) -> None:
            async for line in answer.content:
                if line.startswith(b"event: snapshot"):
                    counts[index] += 1

        readers = [asyncio.create_task(read(i, answer)) for i, answer in enumerate(answers)]
        await stop.wait()
        elapsed = time.monotonic() - started
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for answer in answers:
            answer.close()
    print(json.dumps({"snapshots": counts, "seconds": elapsed}), flush=True)


def cpu_ns(pids: list[int]) -> int:
    """CPU time of ``pids`` (every thread) in nanoseconds, from the scheduler's own count
    (``/proc/PID/task/TID/schedstat``): over a quiet window a gateway spends a few
    milliseconds, less than the 10 ms ticks ``/proc/PID/stat`` counts in."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                total += int(task.read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended meanwhile
    return total


def idle_cpu(targets: list[Target], seconds: float) -> dict[str, float]:
    """Each gateway's CPU milliseconds per second over the same ``seconds`` without load:
    what its sampler and (console-5-tabs) the live streams cost by themselves."""
    trees = {target.name: process_tree(target.pid) for target in targets if target.pid}
    before = {name: cpu_ns(pids) for name, pids in trees.items()}
    time.sleep(seconds)  # the window measured: nothing to wait for
    return {name: (cpu_ns(pids) - before[name]) / 1e6 / seconds for name, pids in trees.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    available = sorted(os.sched_getaffinity(0))
    shared, own = available[0], available[-1]  # upstream + client + tabs | the gateway
    PEERS.mkdir(exist_ok=True)
    with ExitStack() as stack:
        base = stack.enter_context(upstream(64, 0.0, shared))
        targets = [served(name, base, own, shared, stack) for name in ROWS]
        idle = idle_cpu(targets, 4 * args.seconds)
        results = focused_runs(targets, args, WORKLOAD, shared)
        cores = {target.name: target.cores for target in targets}
    rows = []
    for (name, concurrency), runs in sorted(
        results.items(), key=lambda item: (item[0][1], ROWS.index(item[0][0]))
    ):
        plain = results[("polyroute", concurrency)]
        row = {
            "gateway": name,
            "cores": cores[name],
            "concurrency": concurrency,
            **medians(runs, ("streams_per_s", "ttft_p50_ms", "cpu_ms_per_stream")),
            "vs_plain_streams": median_ratio(runs, plain, "streams_per_s"),
            "vs_plain_cpu": median_ratio(runs, plain, "cpu_ms_per_stream"),
            "idle_cpu_ms_per_s": idle[name],
            "runs": runs,
        }
        if name == "console-5-tabs":
            row["live_snapshots"] = Watchers.seen["snapshots"]
            row["live_seconds"] = Watchers.seen["seconds"]
            # What the five streams cost a second (over the idle console's), against the
            # CPU the gateway spends a second under this load.
            streams_ms = idle[name] - idle["console-idle"]
            busy_ms = row["cpu_ms_per_stream"] * row["streams_per_s"]
            row["tabs_cpu_ms_per_s"] = streams_ms
            row["tabs_share_under_load"] = streams_ms / busy_ms if busy_ms else None
        rows.append(row)
    settings = {"seconds": args.seconds, "repeats": args.repeats, "chunks": 64, "tabs": TABS,
                "idle_seconds": 4 * args.seconds}  # fmt: skip
    return {"machine": machine(), "settings": settings, "rows": rows}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'conc':>4} {'gateway':<15} {'streams/s':>9} {'vs plain':>8} {'TTFT p50':>8} "
        f"{'CPU ms/stream':>13} {'vs plain':>8} {'idle CPU ms/s':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['concurrency']:>4} {r['gateway']:<15} {cell(r['streams_per_s'], '.0f'):>9} "
            f"{cell(r['vs_plain_streams'], '.3f'):>7}x {cell(r['ttft_p50_ms'], '.2f'):>8} "
            f"{cell(r['cpu_ms_per_stream'], '.3f'):>13} {cell(r['vs_plain_cpu'], '.3f'):>7}x "
            f"{cell(r['idle_cpu_ms_per_s'], '.2f'):>13}"
        )
    print()
    for r in rows:
        if r["gateway"] != "console-5-tabs":
            continue
        counts = ", ".join(str(count) for count in r["live_snapshots"])
        print(f"live snapshots in {r['live_seconds']:.1f} s, each of the {TABS} streams: {counts}")
        print(
            f"the {TABS} streams by themselves: {r['tabs_cpu_ms_per_s']:.2f} ms of CPU a second "
            f"(idle, over console-idle), {cell(r['tabs_share_under_load'], '.3%')} of the "
            f"gateway's CPU under this load"
        )
        streams, cpu = r["vs_plain_streams"], r["vs_plain_cpu"]
        held = streams is not None and cpu is not None
        held = held and streams >= TARGET[0] and cpu <= TARGET[1]
        print(
            f"target: console-5-tabs >= {TARGET[0]}x polyroute's streams/s and <= {TARGET[1]}x "
            f"its CPU per stream at c={r['concurrency']}: {cell(streams, '.3f')}x and "
            f"{cell(cpu, '.3f')}x, {'met' if held else 'NOT met'}"
        )


def main() -> None:
    if sys.argv[1:2] == ["--watch"]:
        asyncio.run(watch(sys.argv[2]))
        return
    focused_main(__doc__, "benchmarks/console-results.json", CONCURRENCY, run, print_table)


if __name__ == "__main__":
    main()
