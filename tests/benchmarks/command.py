"""``python -m benchmarks...`` as a user runs it, on a tiny workload: a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(module: str, out: Path, *options: str) -> tuple[dict[str, Any], str]:
    """Run ``python -m MODULE --quick OPTIONS --out OUT`` from the project's root; the JSON
    it wrote and its stdout. Fails with the end of its stderr unless it exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--quick", *options, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, Any] = json.loads(out.read_text())
    return results, done.stdout
