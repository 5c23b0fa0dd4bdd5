"""Render benchmarks/results.json as the Markdown table in docs/performance.md.

Run: python -m benchmarks.report [results.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def number(value: float | None, digits: int = 0, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def ratio(row: dict[str, Any], figure: str) -> str:
    value = row.get(f"{figure}_vs_floor")
    return "-" if value is None else f"{value:.2f}x"


def table(results: dict[str, Any]) -> str:
    lines = [
        "| workload | concurrency | client | streams/s | vs floor | chunks/s | CPU s / 1,000 "
        "streams | vs floor | TTFT p50 | TTFT p99 | peak RSS | import |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["streaming"]:
        lines.append(
            f"| {row['workload']} | {row['concurrency']:,} | {row['client']} "
            f"| {number(row['streams_per_s'], 1 if row['streams_per_s'] < 10 else 0)} "
            f"| {ratio(row, 'streams_per_s')} | {number(row['chunks_per_s'])} "
            f"| {number(row['cpu_s_per_1000'], 2)} "
            f"| {ratio(row, 'cpu_s_per_1000')} | {number(row.get('ttft_p50_ms'), 1, ' ms')} "
            f"| {number(row.get('ttft_p99_ms'), 1, ' ms')} "
            f"| {number(row['peak_rss_mb'], 0, ' MB')} | {number(row['import_s'], 2, ' s')} |"
        )
    failover, idle = results["failover"], results["idle"]
    lines += [
        "",
        f"- **Failover**: time to first chunk (p50) {failover['failover_ttft_p50_ms']:.2f} ms with "
        f"the first entry answering 503 at once, against {failover['healthy_ttft_p50_ms']:.2f} ms "
        f"through a healthy one: failing over costs **{failover['failover_cost_ms']:.2f} ms**.",
        f"- **Idle streams**: {idle['idle_streams']:,} router streams held open after their first "
        f"chunk: the client peaked at **{idle['peak_rss_mb']:.0f} MB** RSS (opening them took "
        f"{idle['open_s']:.1f} s on one core).",
    ]
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results.json")
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
