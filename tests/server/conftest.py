"""A real PostgreSQL for the gateway's store tests (tests/store has its own: these stop
theirs mid-load)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.store.postgres_server import PostgresServer


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of its own on a free loopback port, for the session."""
    server = PostgresServer().init().start()
    yield server
    server.close()
