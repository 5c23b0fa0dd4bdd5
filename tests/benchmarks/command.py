"""``python -m benchmarks...`` as a user runs it, on a tiny workload: subprocesses, run
side by side, and beside the rest of the suite (conftest.py starts them with the
session)."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
AT_ONCE = 3

RUNS: dict[str, tuple[str, ...]] = {
    "streaming": (
        "benchmarks",
        *("--clients", "floor,provider,router", "--concurrency", "1,4", "--chunks", "8"),
        *("--seconds", "0.2", "--paced-seconds", "0.3"),
    ),
    "gateway": (
        "benchmarks.gateway",
        *("--gateways", "direct,polyroute,polyroute-messages,polyroute-responses"),
        *("--seconds", "1"),
    ),
    "embeddings": ("benchmarks.embeddings", "--seconds", "0.5"),
    "cache": ("benchmarks.cache", "--concurrency", "1,4", "--seconds", "0.6"),
    "affinity": ("benchmarks.affinity",),
    "console": ("benchmarks.console", "--concurrency", "4", "--seconds", "1"),
    "observability": (
        "benchmarks.observability",
        *("--seconds", "0.5", "--concurrency", "1,4"),
    ),
    "overload": (
        "benchmarks.overload",
        *("--rows", "uncapped,cap-4", "--concurrency", "16", "--seconds", "1"),
    ),
}
"""Each benchmark's smoke run: the module, then its options (``--quick`` and ``--out``
are added)."""


class BenchmarkRuns:
    """Every run of :data:`RUNS`, started at once (:data:`AT_ONCE` at a time) in
    ``scratch``; :meth:`result` waits for one."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self._pool = ThreadPoolExecutor(max_workers=AT_ONCE, thread_name_prefix="benchmark")
        self._runs: dict[str, Future[tuple[dict[str, Any], str]]] = {
            name: self._pool.submit(_run, name, scratch) for name in RUNS
        }

    def result(self, name: str) -> tuple[dict[str, Any], str]:
        """The JSON run ``name`` wrote and its stdout; fails with the end of its stderr
        unless it exited 0."""
        return self._runs[name].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _run(name: str, scratch: Path) -> tuple[dict[str, Any], str]:
    module, *options = RUNS[name]
    out = scratch / f"{name}.json"
    if name == "streaming":
        options += ["--plot", str(scratch / "plot.png")]
    done = subprocess.run(
        [sys.executable, "-m", module, "--quick", *options, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    results: dict[str, Any] = json.loads(out.read_text())
    return results, done.stdout
