"""The suite's ports in tests: three free ones in a row, never the fixed defaults."""

from __future__ import annotations

import socket
from contextlib import ExitStack

import pytest


def free_port_run(length: int = 3) -> int:
    """A port P with P, P+1... P+length-1 all free just now."""
    for _ in range(100):
        with ExitStack() as stack:
            first = stack.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port + length > 65536:
                continue
            try:
                for offset in range(1, length):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port + offset))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no {length} free ports in a row")


@pytest.fixture
def upstreams_port() -> int:
    return free_port_run()
