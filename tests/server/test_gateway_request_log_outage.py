"""The request log with its store stopped under load (issue 26, part 1): a gateway on a
real PostgreSQL that is stopped while requests keep coming. Not one request fails; the
records the bounded queue could not hold are counted (``polyroute_log_dropped_total``);
the others are written once the store is back."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.server.helpers import admin, eventually
from tests.server.test_gateway_request_log import KEYS, Stage, staged, unique_id
from tests.store.postgres_server import PostgresServer

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_a_store_stopped_under_load_fails_no_request_and_the_log_catches_up(
    tmp_path: Path, postgres_cluster: PostgresServer
) -> None:
    async with staged("postgres", tmp_path, postgres_cluster, logs={"max_queued": 5}) as stage:
        statuses: list[int] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                statuses.append(await stage.chat(KEYS["CI_KEY"], unique_id("load")))

        workers = [asyncio.create_task(load()) for _ in range(4)]
        try:
            await asyncio.to_thread(postgres_cluster.stop)

            async def queue_full() -> bool:
                figures = await _metrics(stage)
                return figures["polyroute_log_queued"] == 5 and figures["dropped"] > 0

            await eventually(queue_full, within=10, every=0.05)
            await asyncio.to_thread(postgres_cluster.start)
        finally:
            stop.set()
            await asyncio.gather(*workers)
        assert len(statuses) > 5
        assert set(statuses) == {200}  # not one request failed

        async def caught_up() -> tuple[int, int] | None:
            figures = await _metrics(stage)
            logged, dropped = await _count(stage, "ci"), int(figures["dropped"])
            return (logged, dropped) if logged + dropped == len(statuses) else None

        (logged, dropped), _ = await eventually(caught_up, within=20, every=0.1)
        assert dropped > 0
        assert logged == len(statuses) - dropped


async def _metrics(stage: Stage) -> dict[str, float]:
    async with stage.session.get(f"{stage.url}/metrics") as answer:
        text = await answer.text()
    figures = {}
    for name in ("polyroute_log_queued", "polyroute_log_dropped_total"):
        found = re.search(rf"^{name} (\S+)$", text, flags=re.MULTILINE)
        assert found is not None, name
        figures[name] = float(found.group(1))
    figures["dropped"] = figures["polyroute_log_dropped_total"]
    return figures


async def _count(stage: Stage, key: str) -> int:
    """Records of ``key`` in the log, every page."""
    count, cursor = 0, ""
    while True:
        path = f"/admin/requests?key={key}&limit=1000" + (f"&cursor={cursor}" if cursor else "")
        status, page = await admin(stage.session, stage.url, "GET", path)
        assert status == 200, page
        count += len(page["data"])
        if not (cursor := page["next_cursor"]):
            return count
