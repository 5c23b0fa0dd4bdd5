"""The benchmarks' smoke runs start as soon as the session knows a test will read them,
and those tests run last: the rest of the suite runs while the runs do (about a
minute of subprocesses) instead of waiting for them."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.benchmarks.command import BenchmarkRuns

FIXTURE = "benchmark_runs"
_started: list[BenchmarkRuns] = []


def _reads_runs(item: pytest.Item) -> bool:
    return FIXTURE in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    readers = [item for item in items if _reads_runs(item)]
    if readers:
        items[:] = [item for item in items if not _reads_runs(item)] + readers


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any(_reads_runs(item) for item in session.items):
        _started.append(BenchmarkRuns(Path(tempfile.mkdtemp(prefix="polyroute-benchmarks-"))))


def pytest_sessionfinish() -> None:
    """Wait for the runs (also when no test got to read them: an interrupted session)."""
    while _started:
        runs = _started.pop()
        runs.close()
        shutil.rmtree(runs.scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def benchmark_runs() -> BenchmarkRuns:
    """The benchmarks' smoke runs, started as the session began."""
    (runs,) = _started
    return runs
