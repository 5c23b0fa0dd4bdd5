from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.benchmarks.command import BenchmarkRuns


@pytest.fixture(scope="session")
def benchmark_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchmarkRuns]:
    """The benchmarks' smoke runs, all started by the first test that asks for one."""
    runs = BenchmarkRuns(tmp_path_factory.mktemp("benchmarks"))
    yield runs
    runs.close()
