"""benchmarks/gateway.py's ``fresh_runs``: every repeat is measured on gateways started
for it alone and stopped after it, the rows' order rotating as in ``rotated_runs``."""

from __future__ import annotations

from contextlib import ExitStack
from itertools import count
from typing import Any

from benchmarks.gateway import Target, fresh_runs


def test_every_repeat_measures_gateways_of_its_own() -> None:
    pids = count(100)
    running: set[int] = set()
    started: list[list[int]] = []

    def start(stack: ExitStack) -> list[Target]:
        targets = [Target(name, {}, pid=next(pids)) for name in ("a", "b")]
        for target in targets:
            assert target.pid is not None
            running.add(target.pid)
            stack.callback(running.discard, target.pid)
        started.append([pid for target in targets if (pid := target.pid) is not None])
        return targets

    order: list[str] = []

    def run_one(target: Target, point: int) -> dict[str, Any]:
        assert running == set(started[-1])  # this repeat's gateways, and only they, run
        order.append(target.name)
        return {"pid": target.pid, "streams_per_s": 1.0, "errors": 0}  # what a run says

    results = fresh_runs(start, 3, [1, 50], run_one)

    assert not running  # each repeat's gateways stopped with it
    assert len({pid for pids_of in started for pid in pids_of}) == 6
    for index, name in enumerate(("a", "b")):
        served = [pids_of[index] for pids_of in started]
        assert [run["pid"] for run in results[name, 1]] == served  # a new process a repeat
        assert [run["pid"] for run in results[name, 50]] == served  # for both its points
    assert order == ["a", "b"] * 2 + ["b", "a"] * 2 + ["a", "b"] * 2  # rotating
