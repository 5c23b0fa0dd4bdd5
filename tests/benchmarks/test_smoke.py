"""The benchmark suite runs and reports (a tiny workload; no figure is asserted)."""

from __future__ import annotations

from tests.benchmarks.command import BenchmarkRuns


def test_benchmark_suite_runs_on_a_tiny_workload(benchmark_runs: BenchmarkRuns) -> None:
    results, stdout = benchmark_runs.result("streaming")
    rows = results["streaming"]
    assert {(r["client"], r["concurrency"]) for r in rows} == {
        (client, concurrency)
        for client in ("floor", "provider", "router")
        for concurrency in (1, 4)
    }
    assert all(row["streams_per_s"] > 0 for row in rows)
    assert all(row["chunks_per_s"] == row["streams_per_s"] * 8 for row in rows if row["runs"] == 1)
    assert {r["workload"] for r in rows} == {"throughput", "paced 10 ms"}
    assert results["failover"]["failover_ttft_p50_ms"] > 0
    assert results["idle"]["idle_streams"] == 50
    assert "vs floor" in stdout


def test_gateway_benchmark_runs_against_polyroute_serve(benchmark_runs: BenchmarkRuns) -> None:
    """The gateway benchmark's own parts (no peer installed): direct and polyroute,
    spoken to in each of its dialects (a dialect's stream counts only when the load
    client found its first text and its end)."""
    gateways = ("direct", "polyroute", "polyroute-messages", "polyroute-responses")
    results, stdout = benchmark_runs.result("gateway")
    rows = results["rows"]
    assert {(r["gateway"], r["workload"]) for r in rows} == {
        (gateway, workload) for gateway in gateways for workload in ("saturated", "paced")
    } | {("polyroute", "relayed")}  # every stream cut and continued: polyroute's row only
    assert all(r["errors"] == 0 and r["streams_per_s"] > 0 for r in rows)
    served = [r for r in rows if r["gateway"] != "direct" and r["workload"] != "relayed"]
    assert all(r["cpu_ms_per_stream"] > 0 and r["peak_rss_mb"] > 10 for r in served)
    assert all(r["added_ttft_p50_ms"] is not None for r in served)
    dialects = [r for r in served if r["gateway"] != "polyroute"]
    assert {r["dialect"] for r in dialects} == {"messages", "responses"}
    assert all(r["cpu_vs_chat"] > 0 and r["ttft_p50_over_chat_ms"] is not None for r in dialects)
    assert "against chat completions" in stdout


def test_embeddings_benchmark_runs_against_polyroute_serve(benchmark_runs: BenchmarkRuns) -> None:
    """benchmarks/embeddings.py: direct, the floor proxy and polyroute, each answering
    every request whole (its first vector and its usage seen), and the target printed."""
    results, stdout = benchmark_runs.result("embeddings")
    rows = results["rows"]
    assert {(r["gateway"], r["concurrency"]) for r in rows} == {
        (gateway, concurrency)
        for gateway in ("direct", "floor-proxy", "polyroute")
        for concurrency in (1, 50)
    }
    assert all(r["errors"] == 0 and r["requests_per_s"] > 0 for r in rows)
    assert all(r["latency_p50_ms"] > 0 and r["vs_direct"] > 0 for r in rows)
    assert all(r["cpu_ms_per_request"] > 0 for r in rows if r["gateway"] != "direct")
    assert "target: polyroute embeddings" in stdout


def test_cache_benchmark_counts_only_hits_on_the_hit_row(benchmark_runs: BenchmarkRuns) -> None:
    """benchmarks.cache: the hit row's measured streams all said x-polyroute-cache: hit
    (the run fails otherwise), the refresh row's all said refresh."""
    results, stdout = benchmark_runs.result("cache")
    rows = {(r["gateway"], r["concurrency"]): r for r in results["rows"]}
    assert set(rows) == {
        (gateway, concurrency)
        for gateway in ("direct", "polyroute", "polyroute-cache-hit", "polyroute-cache-refresh")
        for concurrency in (1, 4)
    }
    for concurrency in (1, 4):
        hit = rows[("polyroute-cache-hit", concurrency)]
        refresh = rows[("polyroute-cache-refresh", concurrency)]
        assert hit["cache"]["hit"] == sum(run["streams"] for run in hit["runs"]) > 0
        assert refresh["cache"]["refresh"] == sum(run["streams"] for run in refresh["runs"]) > 0
        assert rows[("polyroute", concurrency)]["cache"] == {"hit": 0, "miss": 0, "refresh": 0}
    assert "target: a hit's added TTFT p50" in stdout


def test_affinity_benchmark_runs_two_gateways_on_one_redis(benchmark_runs: BenchmarkRuns) -> None:
    """benchmarks.affinity: both runs answer every turn, the affinity run keeps each
    conversation on one entry and reads more of its input from the caches."""
    results, stdout = benchmark_runs.result("affinity")
    rows = {r["run"]: r for r in results["rows"]}
    assert set(rows) == {"affinity", "no-affinity"}
    for row in rows.values():
        assert row["errors"] == 0
        assert row["turns"] == row["conversations"] * 3
        assert row["ttft_p50_ms"] > 0
    pinned = rows["affinity"]
    assert pinned["conversations_on_one_entry"] == pinned["conversations"]
    assert pinned["cached_share_after_first"] > rows["no-affinity"]["cached_share_after_first"]
    assert pinned["state_decisions"]["shared"] > 0  # the pins were read in Redis
    assert "target: >= 90% of input tokens cached" in stdout


def test_console_benchmark_keeps_five_live_streams_open_under_load(
    benchmark_runs: BenchmarkRuns,
) -> None:
    """benchmarks.console: the plain gateway, the console idle and with five live streams
    open, each answering every request; the streams got a snapshot about every second."""
    results, stdout = benchmark_runs.result("console")
    rows = {r["gateway"]: r for r in results["rows"]}
    assert set(rows) == {"polyroute", "console-idle", "console-5-tabs"}
    assert all(r["streams_per_s"] > 0 and r["cpu_ms_per_stream"] > 0 for r in rows.values())
    tabs = rows["console-5-tabs"]
    assert len(tabs["live_snapshots"]) == 5
    assert all(abs(count - tabs["live_seconds"]) <= 2 for count in tabs["live_snapshots"])
    assert all(r["idle_cpu_ms_per_s"] > 0 for r in rows.values())  # schedstat was read
    assert tabs["tabs_share_under_load"] is not None
    assert "target: console-5-tabs" in stdout


def test_observability_benchmark_measures_the_log_and_tracing(
    benchmark_runs: BenchmarkRuns,
) -> None:
    """benchmarks.observability: the plain gateway, one with a store, and one with the
    request log and tracing on; the log's lag measured from the SQLite file, and two
    spans received for every logged request (the request's and its attempt's)."""
    results, stdout = benchmark_runs.result("observability")
    assert {(r["gateway"], r["concurrency"]) for r in results["rows"]} == {
        (gateway, concurrency)
        for gateway in ("polyroute", "stored", "observed")
        for concurrency in (1, 4)
    }
    assert all(r["streams_per_s"] > 0 and r["cpu_ms_per_stream"] > 0 for r in results["rows"])
    lag = results["lag"]
    assert lag["rows"] > 0
    assert 0 < lag["lag_p50_ms"] <= lag["lag_p99_ms"] <= lag["lag_max_ms"]
    exported = results["exported"]
    assert exported["spans bench-observed"] == 2 * exported["logged_requests"] > 0
    assert "target: observed" in stdout
