"""benchmarks.overload runs end to end on a tiny load: the gateway without a cap admits
everyone, the one with a cap of 4 refuses the rest with a 503 its clients honour, and no
answer fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_overload_benchmark_sheds_past_the_cap_and_fails_nothing(tmp_path: Path) -> None:
    out = tmp_path / "overload.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.overload", "--quick"),
            *("--rows", "uncapped,cap-4", "--concurrency", "16", "--seconds", "1"),
            *("--out", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["row"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"uncapped", "cap-4"}
    assert rows["uncapped"]["shed"] == 0
    assert rows["cap-4"]["shed"] > 0
    assert all(row["errors"] == 0 and row["streams"] > 0 for row in rows.values())
    assert all(row["ttft_p99_ms"] is not None for row in rows.values())
