"""benchmarks.overload runs end to end on a tiny load: the gateway without a cap admits
everyone, the one with a cap of 4 refuses the rest with a 503 its clients honour, and no
answer fails."""

from __future__ import annotations

from tests.benchmarks.command import BenchmarkRuns


def test_overload_benchmark_sheds_past_the_cap_and_fails_nothing(
    benchmark_runs: BenchmarkRuns,
) -> None:
    results, _ = benchmark_runs.result("overload")
    rows = {row["row"]: row for row in results["rows"]}
    assert set(rows) == {"uncapped", "cap-4"}
    assert rows["uncapped"]["shed"] == 0
    assert rows["cap-4"]["shed"] > 0
    assert all(row["errors"] == 0 and row["streams"] > 0 for row in rows.values())
    assert all(row["ttft_p99_ms"] is not None for row in rows.values())
