"""Fixtures of the simulator's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from polyroute.simulator.server import SimulatorServer


@pytest.fixture
async def started() -> AsyncIterator[list[SimulatorServer]]:
    """The servers a test appends as it starts them, stopped after it."""
    servers: list[SimulatorServer] = []
    yield servers
    for server in servers:
        await server.stop()
